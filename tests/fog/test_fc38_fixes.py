"""Audit fc38: a FogConfig field assigned after construction is checked when a model is built from it."""

import pytest
from transformers import AutoModelForCausalLM

from hf_ext.models.fog import FogConfig, FogForCausalLM, FogModel


def _config():
    return FogConfig(vocab_size=97, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_act", "silu", "unknown hidden_act='silu'"),  # silently built an exact-GELU MLP
        ("qk_norm", "RMS", "unknown qk_norm='RMS'"),  # AttributeError at the first forward
        ("num_key_value_heads", 3, "num_key_value_heads=3"),
        ("softmax_scale", -1.0, "FogConfig.softmax_scale"),  # NaN-free but non-finite logits
        ("pad_token_id", 500, "FogConfig.pad_token_id"),
    ],
)
@pytest.mark.parametrize("build", [FogModel, FogForCausalLM, AutoModelForCausalLM.from_config])
def test_field_assigned_after_construction_is_checked_at_build(build, field, value, message):
    config = _config()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        build(config)


def test_valid_assignment_still_builds():
    config = _config()
    config.hidden_act = "swiglu"
    config.num_key_value_heads = None  # resolved as at construction
    model = FogForCausalLM(config)
    assert model.config.num_key_value_heads == 4
    assert hasattr(model.model.layers[0].mlp, "gate_proj")


def test_from_pretrained_config_override_is_checked(tmp_path):
    # transformers sets `from_pretrained(folder, field=value)` overrides after the config is built
    FogForCausalLM(_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown hidden_act='silu'"):  # loaded an exact-GELU MLP
        AutoModelForCausalLM.from_pretrained(tmp_path, hidden_act="silu")
