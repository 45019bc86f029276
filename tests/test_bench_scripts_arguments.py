"""Audit cl21, F3 (the other benchmarks): each scripts/bench_*.py checks its arguments before any work, naming the
flag. Before: `bench_hyperinf.py --seeds abc` (or -1) failed with a bare int() / numpy error, `--max_fim_dim -5` was
taken, and `--output` into a missing folder (also `bench_compliance.py`'s) failed only once the whole benchmark had
run; `bench_neuralgrok.py --threads 0` was refused as `--torch_threads`, a flag its user never gave;
`bench_optim.py --hidden_size 130` failed in transformers' config (an odd head dimension), naming no flag;
`bench_fp8.py --warmup_steps -1` was silently 0 and an uneven head split was refused by the config, without `--`."""

from __future__ import annotations

import os
import re
import runpy

import pytest


def _script(repo_root, name):
    return runpy.run_path(os.path.join(repo_root, "scripts", f"{name}.py"))


def _exits_naming(capsys, call, message):
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


_SMALL_HYPERINF = ["--seeds", "0", "--widths", "8", "--ranks", "1", "--width_rank", "1", "--rank_width", "8"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "abc"], "argument --seeds: must be comma-separated integers >= 0, got 'abc'"),
        (["--seeds", "0,-1"], "argument --seeds: must be comma-separated integers >= 0, got '0,-1'"),
        (["--widths", "8,x"], "argument --widths: must be comma-separated integers >= 1"),
        (["--max_fim_dim", "-5"], "argument --max_fim_dim: must be an integer >= 0, got -5"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
        (["--output", "{tmp}/missing/x.json"], "argument --output: .* does not exist or is not writable"),
        (["--output", "{tmp}"], "argument --output: must be a file path"),
    ],
)
def test_bench_hyperinf(repo_root, capsys, tmp_path, argv, message):
    main = _script(repo_root, "bench_hyperinf")["main"]
    argv = [a.format(tmp=tmp_path) for a in argv]
    _exits_naming(capsys, lambda: main([*_SMALL_HYPERINF, *argv]), message)


def test_bench_hyperinf_writes_its_output(repo_root, tmp_path):
    main = _script(repo_root, "bench_hyperinf")["main"]
    main([*_SMALL_HYPERINF, "--max_fim_dim", "0", "--output", str(tmp_path / "bench.json")])
    assert (tmp_path / "bench.json").is_file()


def test_bench_compliance_output_folder_is_checked_first(repo_root, capsys, tmp_path):
    main = _script(repo_root, "bench_compliance")["main"]
    argv = ["--num_urls", "200", "--num_hosts", "5", "--chunks", "1", "--google_sample", "0"]
    _exits_naming(
        capsys,
        lambda: main([*argv, "--output", str(tmp_path / "missing" / "x.jsonl")]),
        "argument --output: .* does not exist or is not writable",
    )


def test_bench_neuralgrok_threads(repo_root, capsys):
    main = _script(repo_root, "bench_neuralgrok")["main"]
    _exits_naming(capsys, lambda: main(["--tiny", "--threads", "0"]), r"--threads=0 must be >= 1\.")


@pytest.mark.parametrize("arch, hidden", [("llama", 130), ("llama", 129), ("gpt2", 129)])
def test_bench_optim_head_split(repo_root, arch, hidden):
    main = _script(repo_root, "bench_optim")["main"]
    with pytest.raises(ValueError, match=f"^--hidden_size {hidden} does not split over the model's 2 attention heads"):
        main(["--arch", arch, "--hidden_size", str(hidden), "--layers", "1", "--vocab_size", "64", "--rounds", "1",
              "--device", "cpu", "--optimizers", "adamw"])  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--warmup_steps", "-1"], r"^--warmup_steps must be >= 0, got -1\."),
        (["--num_attention_heads", "3"], r"^--num_attention_heads 3 must divide --hidden_size 64"),
        (["--num_key_value_heads", "3"], r"--num_key_value_heads 3 must divide --num_attention_heads"),
        (["--num_key_value_heads", "0"], r"^--num_key_value_heads must be positive, got 0\."),
        (["--vocab_size", "0"], r"^--vocab_size must be positive, got 0\."),
    ],
)
def test_bench_fp8(repo_root, argv, message):
    parse_args = _script(repo_root, "bench_fp8")["parse_args"]
    small = ["--hidden_size", "64", "--swiglu_intermediate_size", "128", "--num_attention_heads", "4",
             "--num_key_value_heads", "2", "--device", "cpu"]  # fmt: skip
    with pytest.raises(ValueError, match=message):
        parse_args([*small, *argv])


# ------------------------------------------------------------------------------------------ dc27 F2: import noise
def _first_import_line(tree, prefixes):
    import ast

    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module and module.split(".")[0] in prefixes:
                return node.lineno
    return None


@pytest.mark.parametrize(
    "name",
    sorted(n[:-3] for n in os.listdir(os.path.join(os.path.dirname(__file__), "..", "scripts")) if n.endswith(".py")),
)
def test_scripts_import_hf_ext_before_transformers(repo_root, name):
    """dc27 F2: `scripts/bench_layer_parallel.py --tiny` (docs/benchmarks.md) imported transformers before hf_ext, so
    torchao's "Failed to load ... _C_mxfp8.so" lines and torch's pytree deprecation warnings, which `import hf_ext`
    filters on CPU-only builds (README), were printed before every run."""
    import ast

    with open(os.path.join(repo_root, "scripts", f"{name}.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    hf_ext_line = _first_import_line(tree, {"hf_ext"})
    library_line = _first_import_line(tree, {"transformers", "torchao", "peft", "accelerate", "trl", "datasets"})
    assert library_line is None or (hf_ext_line is not None and hf_ext_line < library_line), (
        f"scripts/{name}.py imports a library at line {library_line} before hf_ext (line {hf_ext_line})"
    )
