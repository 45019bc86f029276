"""What the layer_parallel recipe reports: task retention (higher- and lower-is-better metrics), the converted range,
the evaluation limited to --max_eval_blocks held-out blocks, and the flags of the small source's training."""

from __future__ import annotations

import pytest
import torch

from hf_ext.recipes.layer_parallel import _add_retention, main


def test_retention_is_the_percent_of_the_source_score_kept_averaged_over_tasks():
    """acc-like metrics: 100 x paired / source per task, `retention` their mean; a task the source scores 0 on has
    none and is left out of the mean."""
    rows = [
        {"task_scores": {"a": 0.8, "b": 0.5, "z": 0.0}},
        {"task_scores": {"a": 0.4, "b": 0.5, "z": 0.3}},
    ]
    _add_retention(rows, "acc")
    assert rows[0]["retention"] == pytest.approx(100.0)
    assert rows[1]["task_retention"]["a"] == pytest.approx(50.0)
    assert rows[1]["task_retention"]["b"] == pytest.approx(100.0)
    assert rows[1]["task_retention"]["z"] is None
    assert rows[1]["retention"] == pytest.approx(75.0)


def test_retention_of_a_lower_is_better_metric_is_source_over_paired():
    """For perplexity a paired model at twice the source's perplexity keeps 50%."""
    rows = [{"task_scores": {"p": 10.0}}, {"task_scores": {"p": 20.0}}]
    _add_retention(rows, "perplexity")
    assert rows[1]["task_retention"]["p"] == pytest.approx(50.0)
    assert rows[1]["retention"] == pytest.approx(50.0)


def test_given_range_eval_blocks_and_source_training_flags(tmp_path, recipe_tiny):
    """A run converting [0, 4) reports 2 pairs; its evaluations use the first --max_eval_blocks held-out blocks
    (recomputed here with the saved model), and the small source is trained with --pretrain_learning_rate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ext.data import load_text_datasets, pack_dataset

    out = tmp_path / "run"
    argv = [a for a in recipe_tiny]
    argv[argv.index("--max_eval_blocks") + 1] = "3"
    res = main([*argv, "--output_dir", str(out), "--pretrain_steps", "1", "--pretrain_learning_rate", "0.0123",
                "--skip_sweep", "--lp_start", "0", "--lp_end", "4", "--finetune", "false", "--seed", "2"])  # fmt: skip
    assert res["chosen"] == {"start": 0, "end": 4, "pairs": 2}
    source_args = torch.load(out / "source" / "training_args.bin", weights_only=False)
    assert source_args.learning_rate == pytest.approx(0.0123)
    assert source_args.max_steps == 1
    model = AutoModelForCausalLM.from_pretrained(out / "layer_parallel_model").eval()
    tok = AutoTokenizer.from_pretrained(out / "layer_parallel_model")
    _, held_out = load_text_datasets(None, None, None, None, "text", seed=2)
    blocks = pack_dataset(held_out, tok, 32, "text")
    assert len(blocks) > 3
    ids = torch.tensor(blocks[:3]["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert res["converted_eval"]["loss"] == pytest.approx(expected, rel=1e-4)
    assert res["reloaded_eval"]["loss"] == pytest.approx(expected, rel=1e-4)
    assert res["reload_matches"] is True
