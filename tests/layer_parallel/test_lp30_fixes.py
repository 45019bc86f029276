"""Audit pass 30 (lp30): `layer_pairing_task_sweep` refuses non-integer ranges (F1)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_ext.evaluation.uses as uses
from hf_ext.evaluation import layer_pairing_task_sweep


def _llama(max_positions: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()


class _Evaluated(Exception):
    pass


@pytest.fixture
def no_evaluation(monkeypatch):
    def evaluate_model(*args, **kwargs):
        raise _Evaluated

    monkeypatch.setattr(uses, "evaluate_model", evaluate_model)


@pytest.mark.parametrize("ranges", [[(0.5, 2.5)], ["02"], [(True, 3)], [(0, 2, 4)], [2]])
def test_task_sweep_refuses_ranges_that_are_not_integer_pairs(no_evaluation, ranges):
    # int() truncated (0.5, 2.5) to (0, 2) and "02" to (0, 2), and evaluated them
    with pytest.raises(TypeError, match=r"ranges must hold \(start, end\) pairs of integer layer indices"):
        layer_pairing_task_sweep(_llama(), None, ranges, tasks="hf_ext_cloze")


def test_task_sweep_still_takes_numpy_integer_ranges(no_evaluation):
    with pytest.raises(_Evaluated):  # past every check, at the first evaluation
        layer_pairing_task_sweep(_llama(), None, np.array([[0, 2]]), tasks="hf_ext_cloze")
