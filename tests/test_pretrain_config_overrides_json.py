"""`--config_overrides` values are JSON: a list or object value keeps its commas (pd27 F1)."""

import pytest

from hf_ext.recipes.pretrain import ModelArguments, check_config_overrides, fresh_config, parse_config_overrides


def test_a_json_list_or_object_value_keeps_its_commas():
    text = 'layer_types=["full_attention","sliding_attention"],rope_parameters={"rope_type":"linear","factor":2.0}'
    assert parse_config_overrides(text + ",initializer_range=0.01,hidden_act=silu") == {
        "layer_types": ["full_attention", "sliding_attention"],
        "rope_parameters": {"rope_type": "linear", "factor": 2.0},
        "initializer_range": 0.01,
        "hidden_act": "silu",
    }
    assert parse_config_overrides('a="x,y",b=[1,[2,3]]') == {"a": "x,y", "b": [1, [2, 3]]}


def test_a_fresh_qwen2_takes_a_layer_types_list():
    args = ModelArguments(
        model_type="qwen2",
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        config_overrides='layer_types=["full_attention","sliding_attention"],use_sliding_window=true',
    )
    check_config_overrides(args)
    assert fresh_config(args, 256, 32).layer_types == ["full_attention", "sliding_attention"]


def test_an_item_without_a_value_is_still_refused():
    with pytest.raises(ValueError, match="'b' is not key=value"):
        parse_config_overrides("a=1,b")
