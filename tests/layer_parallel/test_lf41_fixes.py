"""Audit lf41: malformed `ranges` of the layer-pairing sweeps are refused by name before any evaluation."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.evaluation.uses import layer_pairing_task_sweep
from hf_ext.models.layer_parallel.sweep import perplexity_sweep, save_sweep


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def dataset():
    return Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5, 6]] * 4, "labels": [[1, 2, 3, 4, 5, 6]] * 4})


@pytest.fixture
def no_evaluation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("evaluated before the ranges were checked")

    monkeypatch.setattr("hf_ext.models.layer_parallel.sweep.evaluate_causal_lm", fail)


@pytest.mark.parametrize(
    ("ranges", "match"),
    [
        ([(0, 2, 4)], r"its entry \(0, 2, 4\) is not two integers"),  # too many values to unpack
        ([(0,)], r"its entry \(0,\) is not two integers"),  # not enough values to unpack
        ([5], "its entry 5 is not two integers"),  # 'int' object is not iterable
        ((0, 2), r"for that one range pass \[\(0, 2\)\]"),  # 'int' object is not iterable
        (5, "ranges must be a list of"),
        ([(0.5, 2.5)], r"its entry \(0.5, 2.5\)"),
        ([(True, 3)], r"its entry \(True, 3\)"),
    ],
)
def test_malformed_ranges_are_refused_by_name(model, dataset, no_evaluation, ranges, match):
    with pytest.raises(TypeError, match=match):
        perplexity_sweep(model, dataset, ranges=ranges, progress=False)


@pytest.mark.parametrize("ranges", [[(2, 0)], [(0, 6)], [(0, 3)], [(-2, 0)]])
def test_invalid_range_error_names_ranges_and_the_range(model, dataset, no_evaluation, ranges):
    start, end = ranges[0]
    with pytest.raises(ValueError, match=rf"^ranges: \({start}, {end}\): "):
        perplexity_sweep(model, dataset, ranges=ranges, progress=False)


@pytest.mark.parametrize("ranges", [None, 5, (0, 2)])
def test_task_sweep_refuses_ranges_that_are_no_list_of_pairs(model, ranges):
    with pytest.raises(TypeError, match="ranges must be a list of"):
        layer_pairing_task_sweep(model, None, ranges=ranges)


def test_numpy_ranges_give_json_rows(model, dataset, tmp_path):
    # numpy ints were kept in the rows: save_sweep failed with "int64 is not JSON serializable" after the sweep
    rows = perplexity_sweep(model, dataset, ranges=[np.array([0, 2]), (np.int64(2), np.int64(4))], progress=False)
    assert [(r["start"], r["end"]) for r in rows] == [(0, 0), (0, 2), (2, 4)]
    assert all(type(r["start"]) is int and type(r["end"]) is int for r in rows)
    paths = save_sweep(rows, str(tmp_path))
    with open(paths["json"]) as fh:
        assert [row["end"] for row in json.load(fh)["rows"]] == [0, 2, 4]


def test_empty_sweep_of_a_peft_model_points_to_evaluate_causal_lm(model, dataset):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(
        LlamaForCausalLM(model.config), peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    with pytest.raises(TypeError, match=r"carries peft adapters.*ranges=\[\].*evaluate_causal_lm"):
        perplexity_sweep(wrapped, dataset, ranges=[], progress=False)
