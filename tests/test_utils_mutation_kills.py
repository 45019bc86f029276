"""Shared utilities checked against independent references: token-weighted eval loss (float64 loop), checkpoint
resolution by step number, atomic figure formats, lm-eval score reading, parameter fingerprints.

Written from a mutation-testing pass: each test fails for a plausible bug the other tests let through.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_ext.utils import (
    atomic_savefig,
    causal_lm_eval_loss,
    ensure_writable_dir,
    rank_fingerprints,
    resolve_resume_checkpoint,
)
from hf_ext.utils.scores import task_scores


def _tiny_llama(dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, attention_dropout=dropout)  # fmt: skip
    return LlamaForCausalLM(cfg)


def _reference_loss(model, rows_ids, rows_labels) -> float:
    """Sum of next-token cross-entropies (float64) over every non-ignored label, divided by their number."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, labels in zip(rows_ids, rows_labels):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
            for t in range(len(ids) - 1):
                if labels[t + 1] != -100:
                    total -= float(logp[t, labels[t + 1]])
                    count += 1
    return total / count


def test_eval_loss_is_weighted_per_token_across_uneven_batches():
    """Batches with very different numbers of scored tokens: the mean is over tokens, not over batches, -100 labels
    are left out of numerator and denominator, and the `labels` column (not `input_ids`) is the target."""
    import datasets

    model = _tiny_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 32, (5, 8), generator=g).tolist()
    labels = [list(r) for r in ids]
    labels[0][2:] = [-100] * 6  # one scored token in the first batch
    labels[1][1:] = [-100] * 7
    labels[3][4] = -100
    labels[4][5] = (ids[4][5] + 1) % 32  # a label that differs from the input token
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})
    want = _reference_loss(model, ids, labels)
    for batch_size in (2, 3, 5):
        assert causal_lm_eval_loss(model, ds, batch_size=batch_size) == pytest.approx(want, rel=1e-5)
    no_labels = datasets.Dataset.from_dict({"input_ids": ids})
    assert causal_lm_eval_loss(model, no_labels, batch_size=2) == pytest.approx(
        _reference_loss(model, ids, ids), rel=1e-5
    )


def test_eval_loss_scores_in_eval_mode_and_restores_the_mode():
    import datasets

    model = _tiny_llama(dropout=0.9)
    ids = torch.randint(0, 32, (3, 12), generator=torch.Generator().manual_seed(2)).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids})
    want = _reference_loss(model, ids, ids)
    model.train()
    assert causal_lm_eval_loss(model, ds) == pytest.approx(want, rel=1e-5)  # dropout was off
    assert model.training
    model.eval()
    causal_lm_eval_loss(model, ds)
    assert not model.training


def _checkpoint(root, name, complete=True):
    folder = root / name
    folder.mkdir()
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return folder


def test_last_checkpoint_is_chosen_by_step_number_not_by_name(tmp_path):
    for step in (9, 10, 99):
        _checkpoint(tmp_path, f"checkpoint-{step}")
    assert resolve_resume_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-99")
    _checkpoint(tmp_path, "checkpoint-100")
    assert resolve_resume_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-100")
    _checkpoint(tmp_path, "checkpoint-101", complete=False)
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-100")
    # folders that are not Trainer checkpoints are never picked, even with a larger number
    _checkpoint(tmp_path, "checkpoint-500-backup")
    _checkpoint(tmp_path, "checkpoint-600.old")
    _checkpoint(tmp_path, "old-checkpoint-700")
    assert resolve_resume_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-100")


@pytest.mark.parametrize("value", ["True", "LAST", " last ", "Latest", "yes"])
def test_last_forms_are_case_insensitive(tmp_path, value):
    _checkpoint(tmp_path, "checkpoint-3")
    assert resolve_resume_checkpoint(value, str(tmp_path)) == str(tmp_path / "checkpoint-3")


@pytest.mark.parametrize("value", ["", "false", "False", "none", "None", "no", "0"])
def test_none_forms_start_fresh(tmp_path, value):
    _checkpoint(tmp_path, "checkpoint-3")
    assert resolve_resume_checkpoint(value, str(tmp_path)) is None


@pytest.mark.parametrize("ext, magic", [("pdf", b"%PDF"), ("svg", b"<svg"), ("png", b"\x89PNG")])
def test_atomic_savefig_writes_the_format_of_the_extension(tmp_path, ext, magic):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    path = tmp_path / f"curve.{ext}"
    atomic_savefig(fig, str(path))
    plt.close(fig)
    assert magic in path.read_bytes()[:400]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_unwritable_output_dir_is_refused_even_for_root(tmp_path):
    """/proc accepts no new files, whoever the user is (file modes do not stop root)."""
    import os

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs a Linux /proc")
    with pytest.raises(ValueError, match="--output_dir"):
        ensure_writable_dir("/proc")


def test_scores_pick_the_named_metric_and_filter():
    res = {"results": {"gsm": {"alias": "gsm", "exact_match,strict-match": 0.4, "exact_match_stderr,strict-match": 0.1,
                               "exact_match,flexible-extract": 0.6, "exact_match_stderr,flexible-extract": 0.1}}}  # fmt: skip
    assert task_scores(res, "exact_match,flexible-extract") == {"gsm": 0.6}
    assert task_scores(res, "exact_match,strict-match") == {"gsm": 0.4}
    with pytest.raises(ValueError, match="metric=<name>"):  # two filters: ambiguous, never the first one silently
        task_scores(res, "exact_match")
    with pytest.raises(ValueError, match="metric=<name>"):
        task_scores(res)
    acc = {"results": {"x": {"acc,none": 0.5, "acc_norm,none": 0.7, "acc_stderr,none": 0.01}}}
    assert task_scores(acc, "acc") == {"x": 0.5} and task_scores(acc, "acc_norm") == {"x": 0.7}


def test_plain_nested_scores_skip_stderr_and_labels_and_refuse_non_numbers():
    nested = {
        "a": {"acc": 0.25, "acc_stderr": 0.01, "alias": "A"},
        "b": {"acc": 0.75, "acc_stderr": 0.02, "alias": "B"},
    }
    assert task_scores(nested) == {"a": 0.25, "b": 0.75}
    for bad in (True, float("nan"), float("inf"), "0.5", None):
        with pytest.raises(ValueError, match="finite number"):
            task_scores({"a": 0.5, "b": bad})


def test_fingerprint_is_the_float64_sum_and_sum_of_squares_of_every_parameter():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3)).to(torch.bfloat16)
    with torch.no_grad():
        model[1].bias.add_(1000.0)  # large and small values: float32 accumulation would lose the small ones
    values = [float(x) for p in model.parameters() for x in p.detach().double().flatten()]
    ((total, squares),) = rank_fingerprints(model)
    assert total == pytest.approx(math.fsum(values), rel=1e-12, abs=1e-12)
    assert squares == pytest.approx(math.fsum(v * v for v in values), rel=1e-12)
