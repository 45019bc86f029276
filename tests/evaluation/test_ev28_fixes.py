"""Audit pass 28 (evaluation harness) fixes."""

import pytest

from hf_ext.recipes.layer_parallel import _add_retention


@pytest.mark.parametrize("metric", ["perplexity", "perplexity,none", "word_perplexity,none", "bits_per_byte,none"])
def test_sweep_retention_of_a_perplexity_given_as_lm_eval_key_is_source_over_paired(metric):
    # --eval_metric accepts lm-eval's key ("perplexity,none"); it was read higher-is-better: twice the perplexity
    # retained 200%
    rows = [{"task_scores": {"hf_ext_cloze": 100.0}}, {"task_scores": {"hf_ext_cloze": 200.0}}]
    _add_retention(rows, metric)
    assert rows[1]["task_retention"] == {"hf_ext_cloze": 50.0} and rows[1]["retention"] == 50.0


@pytest.mark.parametrize("metric", ["acc", "acc,none", "acc_norm,none"])
def test_sweep_retention_of_an_accuracy_key_stays_paired_over_source(metric):
    rows = [{"task_scores": {"hf_ext_domain": 0.5}}, {"task_scores": {"hf_ext_domain": 0.25}}]
    _add_retention(rows, metric)
    assert rows[1]["retention"] == 50.0


@pytest.mark.distributed
def test_eval_rows_once_two_ranks_equal_one_process_when_rows_have_different_label_counts(
    tmp_path, repo_root, run_two_ranks
):
    # transformers divided each rank's batch loss by the mean label-token count of both ranks' batches: 2 ranks gave
    # 4.11663 where one process gives 4.11628
    import json
    import os
    import sys

    run_two_ranks("tests/evaluation/scripts/eval_rows_token_counts.py", tmp_path)
    two = json.loads((tmp_path / "eval_loss.json").read_text())
    sys.path.insert(0, os.path.join(repo_root, "tests", "evaluation", "scripts"))
    from eval_rows_token_counts import eval_loss

    assert two["world_size"] == 2
    assert two["eval_loss"] == pytest.approx(eval_loss(str(tmp_path / "one")), abs=1e-6)


def test_layer_pairing_perplexity_of_padded_rows_is_that_of_the_rows_alone():
    # evaluate_causal_lm ignored the attention_mask: left-padded rows attended to their padding (4.5737 vs 4.5611)
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.models.layer_parallel.sweep import evaluate_causal_lm
    from hf_ext.utils.evaluation import causal_lm_eval_loss

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(1)
    alone, left, right = [], [], []
    for length in (12, 7, 4):
        ids = torch.randint(1, 97, (length,), generator=generator).tolist()
        n = 12 - length
        alone.append({"input_ids": ids, "labels": ids})
        left.append({"input_ids": [0] * n + ids, "labels": [-100] * n + ids, "attention_mask": [0] * n + [1] * length})
        right.append(
            {"input_ids": ids + [0] * n, "labels": ids + [-100] * n, "attention_mask": [1] * length + [0] * n}
        )
    ref = evaluate_causal_lm(model, datasets.Dataset.from_list(alone), 1)
    for rows in (left, right):
        ds = datasets.Dataset.from_list(rows)
        got = evaluate_causal_lm(model, ds, 3)
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        assert got["accuracy"] == ref["accuracy"]
        assert got["loss"] == pytest.approx(causal_lm_eval_loss(model, ds, 3), abs=1e-5)


def test_sweep_retention_takes_the_direction_lm_eval_reports(monkeypatch):
    # the recipe read --eval_metric's direction by name only: lm-eval's `ter` (lower is better) kept as paired / source,
    # 10% more translation error showing as 110% retained
    from types import SimpleNamespace

    import hf_ext.evaluation as evaluation
    from hf_ext.recipes.layer_parallel import _task_eval

    scores = iter([{"w": 60.0, "a": 0.5}, {"w": 66.0, "a": 0.4}])

    def lm_eval(*args, **kwargs):
        out = {"results": {t: {"ter,none": v} for t, v in next(scores).items()}}
        out["higher_is_better"] = {"w": {"ter": False}, "a": {"ter": True}}
        return out

    monkeypatch.setattr(evaluation, "evaluate_model", lm_eval)
    sweep_args = SimpleNamespace(eval_tasks="w,a", eval_fewshot=0, eval_limit=None, eval_metric="ter")
    task_eval = _task_eval(sweep_args, tokenizer=None, batch_size=1)
    rows = [task_eval(None), task_eval(None)]
    _add_retention(rows, "ter", task_eval.declared)
    assert rows[1]["task_retention"] == pytest.approx({"w": 100 * 60.0 / 66.0, "a": 100 * 0.4 / 0.5})
