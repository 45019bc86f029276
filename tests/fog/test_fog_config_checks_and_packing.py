"""FogConfig refuses bad head sizes / scales naming the field; the attention interface receives position_ids (packed
sequences) as Llama's does."""

import pytest
import torch
from transformers import AttentionInterface, DataCollatorWithFlattening
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

from hf_ext.models.fog import FogConfig

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize(
    "field, value",
    [
        ("head_dim", 0),
        ("head_dim", -8),
        ("head_dim", 8.0),
        ("head_dim", "8"),
        ("num_key_value_heads", 2.0),
        ("num_key_value_heads", "2"),
        ("softmax_scale", "0.125"),
        ("softmax_scale", float("inf")),
        ("layerscale_init", float("inf")),
        ("input_upscale", True),
        ("qk_norm_init", 0.0),
        ("rms_norm_eps", -1e-5),
        ("initializer_range", -0.02),
        ("attention_dropout", 1.5),
        ("max_position_embeddings", 0),
        ("max_position_embeddings", -1),
        ("rope_theta", float("nan")),
        ("rope_theta", 0),
        ("rope_theta", -10000.0),
        ("pad_token_id", 97),
        ("pad_token_id", -1),
    ],
)
def test_bad_sizes_and_scales_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FogConfig.fog(**TINY, **{field: value})


def test_valid_explicit_sizes_and_scales_still_accepted():
    config = FogConfig.fog(**TINY, head_dim=8, num_key_value_heads=2, softmax_scale=1, rms_norm_eps=0.0)
    assert (config.head_dim, config.num_key_value_heads, config.softmax_scale) == (8, 2, 1)
    config = FogConfig.fog(**TINY, rope_theta=500000.0, pad_token_id=96, max_position_embeddings=1)
    assert (config.rope_parameters["rope_theta"], config.pad_token_id) == (500000.0, 96)


_SEEN: list[bool] = []


def _varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """CPU stand-in for transformers' flash-attention padding-free path: packed sequences are read from
    kwargs["position_ids"] (as `_flash_attention_forward` does) and attended to separately."""
    position_ids = kwargs.get("position_ids")
    _SEEN.append(position_ids is not None)
    if not _is_packed_sequence(position_ids, query.shape[0]):
        return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, is_causal=True)
    (cu_seqlens, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
    bounds = cu_seqlens.tolist()
    outs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, scaling=scaling)[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, dim=1), None


def test_position_ids_reach_the_attention_interface_for_packed_sequences():
    from hf_ext.models.fog import FogForCausalLM

    AttentionInterface.register("fog_test_varlen", _varlen_attention)
    AttentionMaskInterface.register("fog_test_varlen", ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY)).eval()
    model.set_attn_implementation("fog_test_varlen")
    first, second = torch.randint(0, 97, (7,)).tolist(), torch.randint(0, 97, (5,)).tolist()
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": first}, {"input_ids": second}])
    _SEEN.clear()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = model(torch.tensor([second]), use_cache=False).logits[0]
    assert _SEEN and all(_SEEN)
    torch.testing.assert_close(packed[len(first) :], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qk_norm, frozen, expected", [("rms", True, 2.0), ("rms", False, 2.0), ("dyt", False, 2.0)])
def test_qk_norm_init_is_the_initial_gain_of_trainable_and_frozen_qk_norms(qk_norm, frozen, expected):
    """As the reference's `--qknorm-init` (the gain's initial value, or the constant of a frozen RMS gain)."""
    from hf_ext.models.fog import FogForCausalLM

    config = FogConfig.fog(**TINY, qk_norm=qk_norm, freeze_qk_gain=frozen, qk_norm_init=2.0)
    model = FogForCausalLM(config)
    for name in ("q_norm", "k_norm"):
        gain = getattr(model.model.layers[1].self_attn, name).weight
        assert gain.requires_grad is not frozen
        torch.testing.assert_close(gain.detach(), torch.full_like(gain, expected))
