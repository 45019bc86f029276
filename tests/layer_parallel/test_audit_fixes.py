"""Fixes of the lp2 audit (each test failed before its fix):

F1 `scripts/bench_layer_parallel.py --tiny` changes defaults only (it overrode --repeats, --new_tokens, the shape and
   --num_pairs given explicitly) and its JSON lines record the settings used; the docs' compiled-CPU figures say how
   many runs they are.
F2 recipe with --lp_start/--lp_end and the sweep: sweep.md / sweep.json mark and record the converted range (they
   recorded the sweep's own choice), which is kept as `sweep_suggestion`.
F3 --max_ppl_increase nan (and `choose_range(rows, nan)`) refused (it silently chose nothing).
F4 refused before any work: recipe official_tp_split with an odd MLP width (after pre-training before),
   --pretrain_learning_rate <= 0 / non-finite (in the optimizer, after pre-training had started), and
   `perplexity_sweep` with block + official_tp_split or an odd MLP width (after evaluating the source).
F5 a model built from a config follows the source config's `initializer_range` for Linear/Embedding weights (0.02).
F6 merged pairs of a float64 model are folded in float64 (float32 before: 1e-6 logits error).
F8 the docs say how `layer_pairing_task_sweep` and the recipe's retention treat a source score of 0 (they said "does
   the same", but one gives NaN where the other gives 100).
F9 `LayerParallelConfig.lp_merged` must be a bool ("false" built a merged model, 0 an unmerged one).
"""

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.models.layer_parallel import LayerParallelConfig, convert_to_layer_parallel
from hf_ext.models.layer_parallel import sweep as sweep_module
from hf_ext.models.layer_parallel.modeling_layer_parallel import merge_pair_state

TINY = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--block_size", "32", "--max_eval_blocks", "4", "--vocab_size", "512",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--disable_tqdm", "true",
    "--report_to", "none", "--use_cpu", "true", "--pretrain_steps", "2",
]  # fmt: skip


def _llama(dtype=torch.float32, **overrides):
    kwargs = dict(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, attn_implementation="eager",
    )  # fmt: skip
    kwargs.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**kwargs)).to(dtype).eval()


def _packed(n=4, length=8, vocab=64):
    ids = torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return [{"input_ids": i, "labels": i} for i in ids]


# F1 ---------------------------------------------------------------------------------------------------------------


def _bench_args(bench, argv):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(bench.BenchArguments).parse_args_into_dataclasses(args=argv)
    return bench._resolve(args)


def test_bench_tiny_changes_defaults_only_and_explicit_flags_win(bench):
    tiny = _bench_args(bench, ["--tiny"])
    assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.intermediate_size) == (8, 64, 128)
    assert (tiny.num_attention_heads, tiny.num_key_value_heads, tiny.vocab_size) == (4, 2, 512)
    assert (tiny.num_pairs, tiny.new_tokens, tiny.repeats, tiny.device, tiny.modes) == (3, 32, 5, "cpu", "eager")
    # Before: repeats forced to 5, new_tokens capped at 32, the shape forced to 8 x 64 and --num_pairs 7 turned into 3.
    given = _bench_args(
        bench,
        ["--tiny", "--repeats", "1", "--new_tokens", "64", "--num_hidden_layers", "16", "--hidden_size", "32",
         "--num_attention_heads", "2", "--num_key_value_heads", "1", "--vocab_size", "100", "--num_pairs", "7"],
    )  # fmt: skip
    assert (given.repeats, given.new_tokens, given.num_hidden_layers, given.hidden_size) == (1, 64, 16, 32)
    assert (given.num_attention_heads, given.num_key_value_heads, given.vocab_size, given.num_pairs) == (2, 1, 100, 7)
    assert (given.intermediate_size, given.device) == (128, "cpu")  # omitted flags keep --tiny's defaults
    with pytest.raises(ValueError, match="--num_pairs 3 .* does not fit 4 layers"):
        _bench_args(bench, ["--tiny", "--num_hidden_layers", "4"])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--batch_sizes", "0"], "--batch_sizes must be comma-separated positive integers"),
        (["--batch_sizes", "1,-2"], "--batch_sizes must be comma-separated positive integers"),
        (["--batch_sizes", "1,x"], "--batch_sizes must be comma-separated positive integers"),
        (["--lp_start", "-1"], "--lp_start must be >= 0"),
    ],
)
def test_bench_refuses_bad_batch_sizes_and_lp_start_before_building(argv, match, bench):
    """Were accepted by the argument check: `--batch_sizes 0` failed inside `generate`, `1,-2` after measuring batch 1,
    and `--lp_start -1` in the converter (after the source model was built), without naming the flag."""
    with pytest.raises(ValueError, match=match):
        _bench_args(bench, ["--tiny", *argv])


def test_bench_lines_record_the_settings_used(capsys, bench):
    # enough tokens and repeats that timer noise on a busy machine cannot leave a model without a valid run
    argv = ["--tiny", "--repeats", "2", "--new_tokens", "8", "--batch_sizes", "1", "--prompt_length", "4",
            "--num_hidden_layers", "4", "--hidden_size", "32", "--num_pairs", "1"]  # fmt: skip
    lines = bench.main(argv)
    assert len(lines) == 4  # source, paired, zero-pair control (on by default on CPU), ratio
    for line in lines:
        control = line.get("model") == bench.CONTROL
        assert (line["repeats"], line["new_tokens"], line["layers"], line["hidden_size"], line["pairs"]) == (
            2, 8, 4, 32, 0 if control else 1
        )  # fmt: skip
        assert (line["intermediate_size"], line["num_attention_heads"], line["vocab_size"], line["tiny"]) == (
            128, 4, 512, True
        )  # fmt: skip
    capsys.readouterr()


def test_docs_compiled_cpu_figures_state_the_runs(repo_root):
    with open(f"{repo_root}/docs/layer_parallel.md", encoding="utf-8") as fh:
        text = " ".join(fh.read().split())
    assert "over a single run" not in text  # they were 5 runs: --tiny raised --repeats 1 to 5
    assert "the best and the median of 5 alternated runs" in text
    assert "--tiny --modes compiled --new_tokens 8 --repeats 5 --batch_sizes 1" in text


# F2 ---------------------------------------------------------------------------------------------------------------


def test_recipe_sweep_files_record_the_converted_range(tmp_path):
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path / "out"
    results = main(
        [*TINY, "--output_dir", str(out), "--lp_start", "0", "--lp_end", "2", "--max_ppl_increase", "100",
         "--finetune", "false"]
    )  # fmt: skip
    assert results["chosen"] == {"start": 0, "end": 2, "pairs": 1}
    saved = json.loads((out / "sweep.json").read_text())
    assert (saved["chosen"]["start"], saved["chosen"]["end"], saved["chosen"]["pairs"]) == (0, 2, 1)
    # the budget is loose, so the sweep itself would choose the largest range: kept, under its own name
    assert saved["sweep_suggestion"] == {"start": 0, "end": 4, "pairs": 2} == results["sweep_suggestion"]
    starred = [line for line in (out / "sweep.md").read_text().splitlines() if line.startswith("|") and "*" in line]
    assert len(starred) == 1 and "[0, 2) *" in starred[0]
    assert json.loads((out / "layer_parallel_model" / "config.json").read_text())["lp_pairs"] == [[0, 1]]


# F3 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "-0.5"])
def test_recipe_refuses_nan_max_ppl_increase(tmp_path, value):
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--max_ppl_increase must be a number >= 0"):
        main([*TINY, "--output_dir", str(out), "--max_ppl_increase", value])
    assert not out.exists()


def test_choose_range_refuses_nan_and_takes_inf_as_no_budget():
    rows = [
        dict(start=0, end=0, pairs=0, perplexity=10.0, ppl_ratio=1.0),
        dict(start=0, end=2, pairs=1, perplexity=12.0, ppl_ratio=1.2),
        dict(start=0, end=4, pairs=2, perplexity=50.0, ppl_ratio=5.0),
    ]
    with pytest.raises(ValueError, match="max_ppl_increase must be a number >= 0"):
        sweep_module.choose_range(rows, math.nan)
    assert sweep_module.choose_range(rows, math.inf) is rows[2]
    assert sweep_module.choose_range(rows, 0.25) is rows[1]


# F4 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lp_mlp_norm", "official_tp_split", "--intermediate_size", "63"],
         "--lp_mlp_norm official_tp_split cannot convert .*intermediate_size must be even"),
        (["--pretrain_learning_rate", "-1"], "--pretrain_learning_rate must be a finite number > 0"),
        (["--pretrain_learning_rate", "0"], "--pretrain_learning_rate must be a finite number > 0"),
        (["--pretrain_learning_rate", "nan"], "--pretrain_learning_rate must be a finite number > 0"),
        (["--pretrain_learning_rate", "inf"], "--pretrain_learning_rate must be a finite number > 0"),
    ],
)  # fmt: skip
def test_recipe_refuses_impossible_settings_before_pretraining(tmp_path, monkeypatch, extra, match):
    from hf_ext.recipes import layer_parallel as recipe

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the source model was pre-trained before the arguments were checked")

    monkeypatch.setattr(recipe, "_pretrain_small_llama", no_pretraining)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        recipe.main([*TINY, "--output_dir", str(out), *extra])
    assert not out.exists()


@pytest.mark.parametrize(
    "intermediate_size, kwargs, match",
    [
        (48, dict(mode="block", mlp_norm="official_tp_split"), "only exists for lp_mode='sublayer'"),
        (47, dict(mlp_norm="official_tp_split"), "intermediate_size must be even"),
        (47, dict(mlp_norm="official_tp_split", ranges=[(0, 2)]), "intermediate_size must be even"),
    ],
)
def test_perplexity_sweep_refuses_impossible_conversions_before_evaluating(
    monkeypatch, intermediate_size, kwargs, match
):
    def no_evaluation(*args, **kw):
        raise AssertionError("the sweep evaluated a model before checking its arguments")

    monkeypatch.setattr(sweep_module, "evaluate_causal_lm", no_evaluation)
    model = _llama(intermediate_size=intermediate_size)
    with pytest.raises(ValueError, match=match):
        sweep_module.perplexity_sweep(model, _packed(), progress=False, **kwargs)


# F5 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, merged", [("sublayer", True), ("block", True), ("sublayer", False)])
def test_from_config_follows_the_source_initializer_range(mode, merged):
    src = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.5, tie_word_embeddings=False,
    )  # fmt: skip
    config = LayerParallelConfig(source_config=src, lp_start=2, lp_end=4, lp_mode=mode, lp_merged=merged)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    pair = model.model.layers[2]
    attn = pair.self_attn if merged else pair.branch_a.self_attn
    weights = {
        "embed_tokens": model.model.embed_tokens.weight,
        "lm_head": model.lm_head.weight,
        "unpaired q_proj": model.model.layers[0].self_attn.q_proj.weight,
        "unpaired down_proj": model.model.layers[0].mlp.down_proj.weight,
        "pair q_proj": attn.q_proj.weight,
        "pair o_proj": attn.o_proj.weight,
    }
    for name, w in weights.items():
        assert abs(w.detach().std().item() - 0.5) < 0.05, f"{name}: std {w.std().item():.3f}, wanted 0.5"
    for name, module in model.named_modules():  # norms stay ones, biases (none here) zeros
        if "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name


# F6 ---------------------------------------------------------------------------------------------------------------


def test_float64_pairs_are_merged_in_float64():
    src = _llama(torch.float64, attention_bias=True, mlp_bias=True)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # float64 values (not float32 ones cast up), norm gains away from 1, non-zero biases
        for p in src.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    merged = convert_to_layer_parallel(src, 0, 4)
    branches = convert_to_layer_parallel(src, 0, 4, merge=False)
    layer = src.model.layers[0]
    exact = layer.self_attn.q_proj.weight * layer.input_layernorm.weight[None, :]
    stored = merged.model.layers[0].self_attn.q_proj.weight[: exact.shape[0]]
    assert stored.dtype == torch.float64 and torch.equal(stored, exact)  # float32 before: off by ~1e-8
    bias = merged.model.layers[0].self_attn.q_proj.bias[: exact.shape[0]]
    assert torch.equal(bias, layer.self_attn.q_proj.bias)
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (merged(ids).logits - branches(ids).logits).abs().max().item()
    assert diff < 1e-12  # ~1e-6 when folded in float32
    state = {k[len("model.layers.0.") :]: v for k, v in src.state_dict().items() if k.startswith("model.layers.0.")}
    out = merge_pair_state(state, state, "sublayer", "per_layer")
    assert {v.dtype for v in out.values()} == {torch.float64}
    low = merge_pair_state(*[{k: v.to(torch.bfloat16) for k, v in state.items()}] * 2, "block", "per_layer")
    assert {v.dtype for v in low.values()} == {torch.float32}  # bf16 / fp16: computed in float32, cast on load


# F8 ---------------------------------------------------------------------------------------------------------------


def test_docs_state_how_each_retention_treats_a_zero_source_score(repo_root, monkeypatch):
    import hf_ext.evaluation.uses as uses
    from hf_ext.recipes.layer_parallel import _add_retention

    scores = {"hf_ext_domain": 0.0294, "hf_ext_cloze": 0.0}
    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: None)  # lm-eval itself is not under test
    monkeypatch.setattr(uses, "task_scores", lambda res, metric, keep=None: dict(scores))
    library = uses.layer_pairing_task_sweep(_llama(), None, ranges=[(2, 4)], tasks=list(scores))
    recipe_rows = [dict(task_scores=dict(scores)), dict(task_scores=dict(scores))]
    _add_retention(recipe_rows, "acc")
    assert all(math.isnan(r["retention"]) for r in library)  # the library: NaN on every row
    assert [r["retention"] for r in recipe_rows] == [100.0, 100.0]  # the recipe: the zero task left out
    assert recipe_rows[1]["task_retention"]["hf_ext_cloze"] is None
    with open(f"{repo_root}/docs/layer_parallel.md", encoding="utf-8") as fh:
        text = " ".join(fh.read().split())
    assert "`layer_pairing_task_sweep` does the same" not in text
    assert "`retention` is NaN on every row (the source's too) as soon as one task has a source score of 0" in text
    assert "the recipe leaves only that task out (`task_retention[task]` is `None`)" in text


# F9 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_config_refuses_a_non_bool_lp_merged(value):
    with pytest.raises(TypeError, match="lp_merged must be True or False"):
        LayerParallelConfig(source_config=_llama().config, lp_start=0, lp_end=2, lp_merged=value)


@pytest.mark.parametrize("merge", [True, False])
def test_saved_lp_merged_still_loads_and_a_bad_keyword_is_refused(tmp_path, merge):
    lp = convert_to_layer_parallel(_llama(), 0, 2, merge=merge)
    lp.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["lp_merged"] is merge
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.lp_merged is merge and reloaded.config.num_hidden_layers == (3 if merge else 4)
    assert AutoConfig.from_pretrained(tmp_path, lp_merged=merge).lp_merged is merge
    with pytest.raises(ValueError, match=f"lp_merged: saved {merge} -> now {not merge}"):  # the weights don't fit
        AutoConfig.from_pretrained(tmp_path, lp_merged=not merge)
    with pytest.raises(TypeError, match="lp_merged must be True or False"):
        AutoConfig.from_pretrained(tmp_path, lp_merged="false")
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["lp_merged"] = "false"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(TypeError, match="lp_merged must be True or False"):
        AutoConfig.from_pretrained(tmp_path)
