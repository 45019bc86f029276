"""Arguments that cannot work are refused up front, naming the argument: `convert_to_layer_parallel` given both a
range and explicit pairs, recipe ranges / pair counts that do not fit the source model (checked before the small
source model is trained or the given one loaded, and before anything is written), and sweep ranges that would pair a
full-attention with a sliding-window layer (left out of the default sweep, refused before any evaluation)."""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_ext.models.layer_parallel import convert_to_layer_parallel
from hf_ext.models.layer_parallel import sweep as sweep_module


@pytest.mark.parametrize("kwargs", [dict(start=2, end=4, pairs=[[0, 1]]), dict(end=4, pairs=[[0, 1]])])
def test_convert_refuses_a_range_and_pairs_together(source, kwargs):
    # Before: the range was dropped without a word and only `pairs` converted.
    with pytest.raises(ValueError, match="either `pairs` or the range"):
        convert_to_layer_parallel(source, **kwargs)


LOADED = [  # a run converting --model_name_or_path (which refuses the small Llama's flags)
    "--block_size", "32", "--max_eval_blocks", "8", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "8", "--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true",
    "--max_steps", "1",
]  # fmt: skip
TINY = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--vocab_size", "512", "--pretrain_steps", "2", *LOADED,
]  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lp_start", "1", "--lp_end", "2"], "--lp_start/--lp_end: .*odd length"),
        (["--lp_start", "2", "--lp_end", "8"], "--lp_start/--lp_end: .*out of range for a model with 4 layers"),
        (["--lp_start", "2", "--lp_end", "2"], "empty range has no paired layer to fine-tune"),
        (["--pair_counts", "3"], "--pair_counts: Pair count 3 is impossible for 4 layers"),
        (["--pair_counts", "0"], "--pair_counts: Pair count 0"),
    ],
)
def test_recipe_checks_ranges_against_the_small_source_before_training(tmp_path, extra, match):
    # Before: the source model was trained and saved, the sweep run and written, then the range failed.
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main([*TINY, "--output_dir", str(out), *extra])
    assert not out.exists()


@pytest.fixture(scope="module")
def saved_sources(tmp_path_factory, small_tokenizer):
    root = tmp_path_factory.mktemp("lp_sources")
    tokenizer = small_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    llama = LlamaForCausalLM(cfg)
    qwen2 = _mixed_attention_qwen2(vocab_size=len(tokenizer))
    models = (("llama", llama), ("converted", convert_to_layer_parallel(llama, 0, 2)), ("qwen2_mixed", qwen2))
    for name, model in models:
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.mark.parametrize(
    "model, extra, match",
    [
        ("llama", ["--skip_sweep", "--lp_start", "1", "--lp_end", "4"], "--lp_start/--lp_end: .*odd length 3"),
        ("llama", ["--pair_counts", "1,4"], "--pair_counts: Pair count 4 is impossible for 4 layers"),
        ("converted", ["--pair_counts", "1"], "'layer_parallel' model; layer pairing converts"),
        ("qwen2_mixed", ["--skip_sweep", "--lp_start", "1", "--lp_end", "3"], "--lp_start/--lp_end: Layers 1 and 2"),
    ],
)
def test_recipe_checks_the_given_source_before_loading_it(tmp_path, saved_sources, model, extra, match):
    from hf_ext.recipes.layer_parallel import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main([*LOADED, "--model_name_or_path", str(saved_sources / model), "--output_dir", str(out), *extra])
    assert not out.exists()


def _mixed_attention_qwen2(vocab_size: int = 64) -> Qwen2ForCausalLM:
    """4 layers: full, full, sliding, sliding (Qwen2's `max_window_layers`)."""
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=2,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    return model


def _blocks(vocab_size: int = 64) -> Dataset:
    ids = torch.randint(0, vocab_size, (4, 12), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def test_default_sweep_leaves_out_ranges_that_mix_attention_types():
    # Before: the default sweep evaluated the source and the first range, then failed on the range [1, 3).
    rows = sweep_module.perplexity_sweep(_mixed_attention_qwen2(), _blocks(), progress=False)
    assert [(r["start"], r["end"]) for r in rows[1:]] == [(0, 2), (2, 4), (0, 4)]
    assert sweep_module.pairing_ranges(4, layer_types=["full_attention"] * 4) == sweep_module.pairing_ranges(4)
    with pytest.raises(ValueError, match="Every range of 1 pairs"):
        sweep_module.pairing_ranges(4, [1], layer_types=["full_attention", "sliding_attention"] * 2)


def test_sweep_refuses_a_range_that_mixes_attention_types_before_evaluating(monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the ranges were checked")

    monkeypatch.setattr(sweep_module, "evaluate_causal_lm", no_evaluation)
    with pytest.raises(ValueError, match="Layers 1 and 2 use different attention types"):
        sweep_module.perplexity_sweep(_mixed_attention_qwen2(), _blocks(), ranges=[(0, 2), (1, 3)], progress=False)
