"""scripts/bench_fp8.py --tiny: the CPU smoke run of the FP8 throughput benchmark."""

import os
import runpy

import pytest


@pytest.fixture(scope="module")
def bench(repo_root):
    return runpy.run_path(os.path.join(repo_root, "scripts", "bench_fp8.py"))


def test_bench_tiny_prints_ratios_to_bf16_of_the_same_model(bench, capsys):
    rows = bench["main"](["--tiny", "--precisions", "bf16,fp8_tensorwise", "--steps", "2"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(lines) == len(rows) == 6  # 2 models x 2 precisions + the FOG/Llama BF16 ratio + the summary
    by = {(r["model"], r["precision"]): r for r in rows}
    assert by[("fog", "bf16")]["ratio_vs_bf16_same_model"] == 1.0
    for model in ("llama", "fog"):
        r = by[(model, "fp8_tensorwise")]
        assert r["tokens_per_s"] > 0 and r["device"].startswith("cpu")
        expected = r["tokens_per_s"] / by[(model, "bf16")]["tokens_per_s"]
        # the script rounds the ratio to 3 decimals: on CPU the emulated FP8 ratio can be ~0.008, so allow that rounding
        assert r["ratio_vs_bf16_same_model"] == pytest.approx(expected, rel=0.01, abs=5e-4)
    assert by[("fog_vs_llama", "bf16")]["ratio"] > 0
    summary = rows[-1]
    assert summary["model"] == "summary" and set(summary["tokens_per_s"]) == {
        "llama/bf16", "llama/fp8_tensorwise", "fog/bf16", "fog/fp8_tensorwise"
    }  # fmt: skip
    assert summary["fog_fp8_vs_fog_bf16"] == by[("fog", "fp8_tensorwise")]["ratio_vs_bf16_same_model"]
    assert summary["fog_bf16_vs_llama_bf16"] == by[("fog_vs_llama", "bf16")]["ratio"]
    assert set(summary["targets"]) == {"fog_fp8_vs_fog_bf16>=1.40", "fog_bf16_vs_llama_bf16>=0.97"}


def test_bench_gpu_default_is_8b_width_with_at_least_8_layers(bench):
    args = bench["parse_args"]([])
    assert (args.hidden_size, args.swiglu_intermediate_size, args.vocab_size) == (4096, 14336, 131072)
    assert args.num_hidden_layers >= 8 and not args.no_compile
    assert args.models.split(",") == ["llama", "fog"]


def test_bench_bad_arguments(bench):
    with pytest.raises(ValueError, match="--precisions"):
        bench["main"](["--tiny", "--precisions", "fp4"])
    with pytest.raises(ValueError, match="multiples of 16"):
        bench["main"](["--hidden_size", "100"])
