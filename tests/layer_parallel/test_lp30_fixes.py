"""Audit pass 30 (lp30): `layer_pairing_task_sweep` refuses non-integer ranges (F1); a converted model keeps the
dtypes of its source's rotary-embedding buffers (F2)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_ext.evaluation.uses as uses
from hf_ext.evaluation import layer_pairing_task_sweep
from hf_ext.models.layer_parallel import convert_to_layer_parallel


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_empty_range_of_a_cast_source_is_bit_identical(dtype):
    # `model.to(bf16)` casts the source's inv_freq; the converted model rebuilt it in float32 (other RoPE angles)
    source = _llama(max_positions=512).to(dtype)
    ids = torch.randint(0, 50, (2, 300), generator=torch.Generator().manual_seed(1))
    lp = convert_to_layer_parallel(source, 0, 0)
    assert lp.model.rotary_emb.inv_freq.dtype == source.model.rotary_emb.inv_freq.dtype == dtype
    with torch.no_grad():
        assert torch.equal(lp(ids).logits, source(ids).logits)
    paired = convert_to_layer_parallel(source, 1, 3)
    assert paired.model.rotary_emb.inv_freq.dtype == dtype


def test_float32_source_keeps_float32_rotary_buffers():
    lp = convert_to_layer_parallel(_llama(), 1, 3)
    assert lp.model.rotary_emb.inv_freq.dtype == torch.float32


@pytest.mark.parametrize("ranges", [[(0, 3)], [(2, 2)], [(2, 6)], [(-2, 0)]])
def test_task_sweep_says_why_an_integer_range_is_invalid(no_evaluation, ranges):
    # "ranges [(0, 3)] are not valid pairing ranges for 4 layers." gave neither the rule nor the fix
    with pytest.raises(ValueError, match=r"needs 0 <= start < end <= 4 and an even end - start; pass e\.g\. "):
        layer_pairing_task_sweep(_llama(), None, ranges, tasks="hf_ext_cloze")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="blocks"), r"`mode` must be one of \['sublayer', 'block'\], got 'blocks'"),
        (dict(mlp_norm="split"), r"`mlp_norm` must be one of \['per_layer', 'official_tp_split'\], got 'split'"),
    ],
)
def test_convert_names_its_own_arguments_for_a_bad_mode(kwargs, match):
    # the config's check named its fields (lp_mode / lp_mlp_norm), which the caller of convert never wrote (lp30)
    with pytest.raises(ValueError, match=match):
        convert_to_layer_parallel(_llama(), 0, 2, **kwargs)
