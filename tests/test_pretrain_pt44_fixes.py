"""`--config_overrides` with one key twice (`initializer_range=0.01,initializer_range=0.5`) was accepted and the last
value silently won (the model trained with 0.5), while the same field under its alias too (gpt2's `hidden_size` and
`n_embd`) was refused as set twice. Now refused before any work, naming the key."""

import pytest

from hf_ext.recipes import pretrain


@pytest.mark.parametrize(
    "text", ["initializer_range=0.01,initializer_range=0.5", "initializer_range=0.01, initializer_range =0.01"]
)
def test_a_key_given_twice_is_refused(text):
    with pytest.raises(ValueError, match="sets 'initializer_range' twice"):
        pretrain.parse_config_overrides(text)
    args = pretrain.ModelArguments(model_type="llama", config_overrides=text)
    with pytest.raises(ValueError, match="sets 'initializer_range' twice"):
        pretrain.check_config_overrides(args, 32)


def test_distinct_keys_still_parse():
    assert pretrain.parse_config_overrides("initializer_range=0.01,rms_norm_eps=1e-5") == {
        "initializer_range": 0.01,
        "rms_norm_eps": 1e-5,
    }


@pytest.mark.parametrize(
    "text", ["rope_parameters={'rope_type':'default','rope_theta':1e4}", "layer_types=['full_attention']"]
)
def test_a_python_literal_is_refused_as_not_json(text):
    """A list or object written as a Python literal (single quotes) failed to parse as JSON and was kept as a string,
    which transformers' typed config refused later with huggingface_hub's bare StrictDataclassFieldValidationError
    (not a ValueError), naming no flag."""
    with pytest.raises(ValueError, match="is not a JSON list or object"):
        pretrain.parse_config_overrides(text)


@pytest.mark.parametrize(
    ("model_type", "text", "field"),
    [("llama", "rope_parameters=5", "rope_parameters"), ("qwen2", "layer_types=[1,2]", "layer_types")],
)
def test_an_override_of_the_wrong_type_is_refused_naming_the_flag(model_type, text, field):
    """An override whose type the typed config refuses ended validation with the bare StrictDataclassFieldValidationError
    (exit with a traceback naming no flag); it is now a ValueError naming --config_overrides and the field."""
    args = pretrain.ModelArguments(model_type=model_type, config_overrides=text)
    pretrain.check_config_overrides(args, 32)  # (the type of a field without a scalar default is not known here)
    with pytest.raises(ValueError, match=f"refuses a value of --config_overrides: .*{field}"):
        pretrain.check_fresh_model(args, 32)


def test_a_json_list_override_still_builds():
    text = 'layer_types=["full_attention","full_attention","full_attention","full_attention"]'
    args = pretrain.ModelArguments(model_type="qwen2", config_overrides=text)
    pretrain.check_config_overrides(args, 32)
    pretrain.check_fresh_model(args, 32)
