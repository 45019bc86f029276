"""Audit lf41: keyword overrides of `FogConfig.from_pretrained` / `AutoConfig.from_pretrained` are checked there."""

import pytest
from transformers import AutoConfig

from hf_ext.models.fog import FogConfig


def _config():
    return FogConfig(vocab_size=97, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"hidden_size": -5}, "FogConfig.hidden_size must be a positive integer"),
        ({"num_attention_heads": 5}, "num_key_value_heads=4 must be positive and divide num_attention_heads=5"),
        ({"hidden_act": "bogus"}, "unknown hidden_act='bogus'"),
        ({"pre_norm": "yes"}, "FogConfig.pre_norm must be True or False"),
        ({"pre_norm": True}, "pre_norm=True and post_norm=True cannot be combined"),
    ],
)
@pytest.mark.parametrize("load", [AutoConfig.from_pretrained, FogConfig.from_pretrained])
def test_bad_override_is_refused_when_the_config_is_loaded(tmp_path, load, override, message):
    _config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        load(tmp_path, **override)


def test_bad_override_of_from_dict_is_refused():
    with pytest.raises(ValueError, match="unknown qk_norm='RMS'"):
        FogConfig.from_dict(_config().to_dict(), qk_norm="RMS")


def test_valid_overrides_and_unused_kwargs_still_load(tmp_path):
    _config().save_pretrained(tmp_path)
    config, unused = AutoConfig.from_pretrained(
        tmp_path, hidden_act="swiglu", attn_implementation="eager", return_unused_kwargs=True, foo=1
    )
    assert isinstance(config, FogConfig)
    assert config.hidden_act == "swiglu" and config.is_gated_mlp
    assert config._attn_implementation == "eager"
    assert unused == {"foo": 1}
    assert FogConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
