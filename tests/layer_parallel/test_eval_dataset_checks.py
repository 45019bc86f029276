"""The perplexity of the layer-pairing sweep on a dataset with nothing to predict.

`evaluate_causal_lm` returned loss 0, perplexity 1.0 (a perfect model) when no label was left after the shift
(1-token blocks, or every label -100), where `causal_lm_eval_loss` raises; the sweep's rows then read ppl_ratio 1.0
for every range. A dataset without `input_ids` failed with a bare KeyError."""

import pytest
import torch
from datasets import Dataset

import hf_ext.models.layer_parallel.sweep as sweep


def _one_token_blocks():
    return Dataset.from_dict({"input_ids": [[3], [5], [7]], "labels": [[3], [5], [7]]})


def _all_ignored():
    return Dataset.from_dict({"input_ids": [[3, 4, 5], [6, 7, 8]], "labels": [[3, -100, -100], [-100, -100, -100]]})


@pytest.mark.parametrize("make", [_one_token_blocks, _all_ignored])
def test_evaluate_causal_lm_refuses_a_dataset_with_no_token_to_predict(source, make):
    with pytest.raises(ValueError, match="no token to predict"):
        sweep.evaluate_causal_lm(source, make())


def test_evaluate_causal_lm_still_measures_one_predicted_token(source):
    ds = Dataset.from_dict({"input_ids": [[3, 4], [6, 7]], "labels": [[-100, -100], [-100, 7]]})
    out = sweep.evaluate_causal_lm(source, ds)
    logits = source(input_ids=torch.tensor([[6, 7]])).logits[0, 0].float()
    expected = torch.nn.functional.cross_entropy(logits[None], torch.tensor([7])).item()
    assert out["loss"] == pytest.approx(expected, rel=1e-5) and out["perplexity"] > 1.0


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (Dataset.from_dict({"text": ["some text"] * 2}), ValueError, "no input_ids and no labels column"),
        (Dataset.from_dict({"input_ids": [[1, 2]]}), ValueError, "no labels column"),
        (Dataset.from_dict({"input_ids": [], "labels": []}), ValueError, "empty"),
        ([{"input_ids": [1, 2], "labels": [1, 2]}], TypeError, "must be a datasets.Dataset"),
        (_one_token_blocks(), ValueError, "no token to predict"),
    ],
)
def test_perplexity_sweep_checks_eval_dataset_before_converting(source, monkeypatch, bad, error, match):
    import hf_ext.models.layer_parallel.modeling_layer_parallel as modeling

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted before eval_dataset was checked")

    monkeypatch.setattr(modeling, "convert_to_layer_parallel", no_conversion)
    with pytest.raises(error, match=f"eval_dataset.*{match}"):
        sweep.perplexity_sweep(source, bad, ranges=[(0, 2)], progress=False)
    with pytest.raises(error, match=f"eval_dataset.*{match}"):
        sweep.check_eval_dataset(bad)


def _ragged_blocks():
    """Packed blocks of 12 tokens and a short last block (`pack_dataset(..., drop_remainder=False)`), some labels
    ignored."""
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (12, 12, 5, 12, 2)]
    labels = [list(r) for r in ids]
    labels[1][3] = labels[2][4] = -100
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def _alone(model, ds):
    """Token-weighted loss and accuracy with every block evaluated alone (no padding)."""
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for ids, labels in zip(ds["input_ids"], ds["labels"]):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            correct += int(((logits.argmax(-1) == target) & (target != -100)).sum())
            count += int((target != -100).sum())
    return total / count, correct / count


def test_evaluate_causal_lm_scores_a_short_last_block_as_alone(source):
    """ev17: a short last block passed the up-front check, then torch.as_tensor failed on the ragged batch ("expected
    sequence of length 12 at dim 1 (got 5)") after the source's lm-eval run; now it is right-padded, not scored."""
    ds = _ragged_blocks()
    loss, accuracy = _alone(source, ds)
    for batch_size in (1, 2, 3, 16):
        out = sweep.evaluate_causal_lm(source, ds, batch_size=batch_size)
        assert out["loss"] == pytest.approx(loss, rel=1e-5) and out["accuracy"] == pytest.approx(accuracy)
    rows = sweep.perplexity_sweep(source, ds, ranges=[(0, 2)], progress=False)
    assert rows[0]["loss"] == pytest.approx(loss, rel=1e-5) and len(rows) == 2
    with pytest.raises(ValueError, match="dataset row 1 has 3 input_ids and 2 labels"):
        sweep.evaluate_causal_lm(source, Dataset.from_dict({"input_ids": [[1, 2, 3]] * 2, "labels": [[1, 2, 3], [1, 2]]}))


def test_layer_pairing_task_sweep_takes_a_short_last_block(source, monkeypatch):
    import hf_ext.evaluation.uses as uses

    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: {"results": {"t": {"acc,none": 0.5}}})
    ds = _ragged_blocks()
    rows = uses.layer_pairing_task_sweep(source, None, [(0, 2)], tasks=["t"], eval_dataset=ds)
    assert rows[0]["perplexity"] == pytest.approx(torch.tensor(_alone(source, ds)[0]).exp().item(), rel=1e-5)
    assert len(rows) == 2 and rows[0]["ppl_ratio"] == 1.0
