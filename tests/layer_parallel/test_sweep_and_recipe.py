"""Quality sweep helpers, the layer_parallel recipe end to end (tiny) and the benchmark script."""

import json
import os

import pytest
import torch
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

from hf_ext.models.layer_parallel.sweep import (
    choose_range,
    evaluate_causal_lm,
    format_sweep_table,
    pairing_ranges,
    perplexity_sweep,
    save_sweep,
)


def test_pairing_ranges():
    assert pairing_ranges(6) == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (0, 4), (1, 5), (2, 6), (0, 6)]
    assert pairing_ranges(8, [2], stride=3) == [(0, 4), (3, 7), (4, 8)]
    with pytest.raises(ValueError, match="impossible"):
        pairing_ranges(6, [4])
    with pytest.raises(ValueError, match="stride"):
        pairing_ranges(6, stride=0)


def test_choose_range_picks_most_pairs_within_budget():
    rows = [
        dict(start=0, end=0, pairs=0, perplexity=10.0, ppl_ratio=1.0),
        dict(start=0, end=2, pairs=1, perplexity=13.0, ppl_ratio=1.3),
        dict(start=2, end=4, pairs=1, perplexity=10.5, ppl_ratio=1.05),
        dict(start=1, end=5, pairs=2, perplexity=11.5, ppl_ratio=1.15),
        dict(start=2, end=6, pairs=2, perplexity=11.0, ppl_ratio=1.10),
        dict(start=0, end=6, pairs=3, perplexity=20.0, ppl_ratio=2.0),
    ]
    assert choose_range(rows, 0.2) is rows[4]
    assert choose_range(rows, 0.06) is rows[2]
    assert choose_range(rows, 0.01) is None
    assert choose_range(rows, 1.5) is rows[5]
    with pytest.raises(ValueError, match="max_ppl_increase"):
        choose_range(rows, -0.1)


def test_sweep_on_a_small_model(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(0)).tolist()
    data = {"input_ids": ids, "labels": ids}

    class Packed(list):
        def __getitem__(self, item):
            return {k: v[item] for k, v in data.items()}

    ds = Packed(ids)
    base = evaluate_causal_lm(model, ds, batch_size=4)
    rows = perplexity_sweep(model, ds, [(0, 2), (2, 4), (0, 4)], batch_size=4, progress=False)
    assert rows[0]["pairs"] == 0 and rows[0]["perplexity"] == pytest.approx(base["perplexity"])
    assert [(r["start"], r["end"], r["effective_depth"]) for r in rows[1:]] == [(0, 2, 3), (2, 4, 3), (0, 4, 2)]
    assert all(r["perplexity"] != base["perplexity"] for r in rows[1:])
    chosen = choose_range(rows, 10.0)
    assert chosen["pairs"] == 2
    paths = save_sweep(rows, str(tmp_path), chosen)
    assert os.path.getsize(paths["png"]) > 1000
    assert "[0, 4) *" in open(paths["md"]).read() and "[0, 4) *" in format_sweep_table(rows, chosen)
    assert json.load(open(paths["json"]))["chosen"]["end"] == 4
    with pytest.raises(ValueError, match="odd length"):
        perplexity_sweep(model, ds, [(0, 3)], progress=False)


def test_recipe_rejects_bad_arguments_before_writing(tmp_path):
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--lp_mode"):
        main(["--output_dir", str(out), "--lp_mode", "diagonal"])
    with pytest.raises(ValueError, match="--lp_start"):
        main(["--output_dir", str(out), "--lp_start", "2"])
    with pytest.raises(ValueError, match="--max_ppl_increase"):
        main(["--output_dir", str(out), "--max_ppl_increase", "-1"])
    with pytest.raises(ValueError, match="--pair_counts"):
        main(["--output_dir", str(out), "--pair_counts", "one,two"])
    assert not out.exists()




@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, recipe_tiny):
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path_factory.mktemp("lp_recipe") / "lp"
    results = main(
        [*recipe_tiny, "--output_dir", str(out), "--pretrain_steps", "8", "--max_steps", "4", "--pair_counts", "1,2",
         "--max_ppl_increase", "100", "--logging_steps", "1"]
    )  # fmt: skip
    return out, results


def test_recipe_end_to_end_tiny(tiny_run):
    out, results = tiny_run
    assert (out / "sweep.png").exists() and (out / "sweep.md").exists() and (out / "summary.png").exists()
    assert len(results["sweep"]) == 1 + 3 + 1
    assert results["chosen"]["pairs"] == 2  # the budget is loose, so the largest range wins
    assert results["reload_matches"]
    assert len(results["finetune_loss_curve"]) == 4
    # fine-tuning only touched the paired layers
    from safetensors.torch import load_file

    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    source = LlamaForCausalLM.from_pretrained(out / "source")
    converted = convert_to_layer_parallel(source, 0, 4).state_dict()
    tuned = load_file(str(out / "layer_parallel_model" / "model.safetensors"))
    assert torch.equal(tuned["model.embed_tokens.weight"], converted["model.embed_tokens.weight"])
    assert torch.equal(tuned["model.norm.weight"], converted["model.norm.weight"])
    assert not torch.equal(tuned["model.layers.0.mlp.up_proj.weight"], converted["model.layers.0.mlp.up_proj.weight"])


def test_recipe_finetune_resume_matches_uninterrupted(tiny_run, tmp_path, recipe_loaded):
    """Fine-tuning resumed from a Trainer checkpoint ends with the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from hf_ext.recipes.layer_parallel import main

    source = str(tiny_run[0] / "source")
    args = [*recipe_loaded, "--model_name_or_path", source, "--skip_sweep", "--lp_start", "2", "--lp_end", "4",
            "--per_device_train_batch_size", "4", "--max_steps", "4", "--learning_rate", "1e-2"]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main([*args, "--output_dir", str(full), "--save_strategy", "steps", "--save_steps", "2"])
    assert (full / "checkpoint-2").is_dir()
    main([*args, "--output_dir", str(resumed), "--resume_from_checkpoint", str(full / "checkpoint-2")])
    a = load_file(str(full / "layer_parallel_model" / "model.safetensors"))
    b = load_file(str(resumed / "layer_parallel_model" / "model.safetensors"))
    source_lp = load_file(str(tmp_path / "full" / "checkpoint-2" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert not torch.equal(a["model.layers.2.mlp.up_proj.weight"], source_lp["model.layers.2.mlp.up_proj.weight"])


def test_bench_script_runs_and_reports_ratios(capsys, bench):
    """Smoke run of the benchmark (no timing claim here): one line per model and a ratio line per configuration.
    Real timings on a shared machine: 8 new tokens and 3 repeats, so that not every repeat of a model is an invalid
    one (the full generation no slower than the 1-token one), which fails the run (`test_bench_invalid_repeats.py`)."""
    lines = bench.main(
        ["--tiny", "--new_tokens", "8", "--repeats", "3", "--batch_sizes", "1,2", "--prompt_length", "4"]
    )
    ratios = [line for line in lines if "decode_ratio" in line]
    assert [(r["mode"], r["batch"]) for r in ratios] == [("eager", 1), ("eager", 2)]
    assert all(r["decode_ratio"] > 0 and r["effective_depth"] == 5 and r["device"].startswith("CPU") for r in ratios)
    # the zero-pair control (on by default on CPU): same depth as the source, its ratio is the run's noise floor
    control = [line for line in lines if line.get("model") == bench.CONTROL]
    assert [(c["batch"], c["pairs"], c["effective_depth"], c["layers"]) for c in control] == [(1, 0, 8, 8), (2, 0, 8, 8)]
    assert [line.get("model") for line in lines if "model" in line][:3] == ["source", "layer_parallel", bench.CONTROL]
    for r in ratios:
        assert r["control_decode_ratio"] > 0 and r["control_decode_ratio_median"] > 0
        for key in ("decode_ratio_range", "control_decode_ratio_range"):
            low, high = r[key]
            assert 0 < low <= high
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert printed == lines
    with pytest.raises(ValueError, match="--num_pairs"):
        bench.main(["--tiny", "--num_pairs", "5"])
    with pytest.raises(ValueError, match="--modes"):
        bench.main(["--tiny", "--modes", "turbo"])
    with pytest.raises(ValueError, match="--tp 2 needs 2 processes"):
        bench.main(["--tiny", "--tp", "2"])  # not launched with torchrun


def test_bench_control_defaults_on_cpu_only_and_is_refused_with_tp(bench, monkeypatch):
    """The GPU defaults keep the two models the GPU check times; on CPU the zero-pair control is timed too."""

    def resolve(argv):
        (args,) = HfArgumentParser(bench.BenchArguments).parse_args_into_dataclasses(args=argv)
        return bench._resolve(args)

    assert resolve(["--tiny"]).control is True
    assert resolve(["--tiny", "--control", "false"]).control is False
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    assert resolve([]).control is False  # GPU default: source and paired model only
    assert resolve(["--control", "true"]).control is True
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--control is not available with --tp"):
        resolve(["--tiny", "--tp", "2", "--control", "true"])
    assert resolve(["--tiny", "--tp", "2"]).control is False


@pytest.mark.gpu
def test_bench_compiled_static_cache_on_gpu(bench):
    lines = bench.main(
        ["--num_hidden_layers", "8", "--hidden_size", "256", "--intermediate_size", "512", "--num_attention_heads", "4",
         "--num_key_value_heads", "2", "--vocab_size", "1024", "--num_pairs", "3", "--new_tokens", "16", "--repeats", "1"]
    )  # fmt: skip
    assert {(r["mode"], r["batch"]) for r in lines if "decode_ratio" in r} == {
        ("eager", 1), ("eager", 8), ("compiled", 1), ("compiled", 8)
    }  # fmt: skip
