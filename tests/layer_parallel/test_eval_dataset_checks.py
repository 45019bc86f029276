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
