"""Bad-input audit br18, FogConfig: numpy scalars for documented int / float / bool fields."""

import json

import numpy as np
import pytest

from hf_ext.models.fog import FogConfig

SMALL = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128)


@pytest.mark.parametrize(
    "name, value, python_type",
    [
        ("hidden_size", np.int64(64), int),
        ("max_position_embeddings", np.int32(256), int),
        ("rms_norm_eps", np.float32(1e-5), float),
        ("initializer_range", np.float64(0.02), float),
        ("softmax_scale", np.float32(0.125), float),
        ("layerscale", np.True_, bool),
        ("tie_word_embeddings", np.False_, bool),
        ("pad_token_id", np.int64(0), int),
    ],
)
def test_fog_config_takes_numpy_scalars_as_python_values(tmp_path, name, value, python_type):
    """FogConfig refused np.int64(64) / np.float32(1e-5) / np.True_ although GrokDecoderConfig converts them."""
    kwargs = {"hidden_size": 64, **SMALL, name: value}
    config = FogConfig.fog(**kwargs)
    assert type(getattr(config, name)) is python_type and getattr(config, name) == value
    json.loads(config.to_json_string())
    config.save_pretrained(tmp_path)
    assert getattr(FogConfig.from_pretrained(tmp_path), name) == getattr(config, name)


def test_fog_config_numpy_ids_and_rope_values_are_converted():
    config = FogConfig(
        hidden_size=64,
        eos_token_id=[np.int64(1), 2],
        rope_parameters={"rope_type": "default", "rope_theta": np.float32(1e4)},
        **SMALL,
    )
    assert [type(i) for i in config.eos_token_id] == [int, int]
    assert type(config.rope_parameters["rope_theta"]) is float
    json.loads(config.to_json_string())


@pytest.mark.parametrize(
    "name, value",
    [
        ("hidden_size", np.float32(64.0)),
        ("hidden_size", np.True_),
        ("rms_norm_eps", np.float64("nan")),
        ("layerscale", np.int64(1)),
    ],
)
def test_fog_config_still_refuses_wrong_kinds_of_numpy_values(name, value):
    with pytest.raises(ValueError, match=f"FogConfig.{name}"):
        FogConfig(**{"hidden_size": 64, **SMALL, name: value})


@pytest.mark.parametrize("name", ["hidden_act", "qk_norm"])
@pytest.mark.parametrize("value", [np.array(["gelu", "gelu"]), ["rms"], None])
def test_fog_config_names_non_string_choices(name, value):
    """hidden_act=np.array([...]) failed with "The truth value of an array ... is ambiguous"."""
    with pytest.raises(ValueError, match=f"FogConfig: unknown {name}="):
        FogConfig(**{"hidden_size": 64, **SMALL, name: value})
