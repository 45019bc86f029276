"""rv28 F3: `--config_overrides rope_theta=...` (or rope_scaling=...), the field names of transformers 4 configs, was
refused as a field 'a llama config does not have' without the fix: transformers 5 keeps them in rope_parameters. The
refusal now gives the rope_parameters value that sets them, which the check accepts."""

import json
import re

import pytest

from hf_ext.recipes.pretrain import ModelArguments, check_config_overrides, fresh_config


@pytest.mark.parametrize(
    ("model_type", "override", "expected"),
    [
        ("llama", "rope_theta=500000.0", {"rope_theta": 500000.0, "rope_type": "default"}),
        ("qwen2", 'rope_scaling={"rope_type":"linear","factor":2.0}', {"rope_type": "linear", "factor": 2.0}),
    ],
)
def test_a_legacy_rope_override_is_refused_with_the_rope_parameters_that_set_it(model_type, override, expected):
    with pytest.raises(ValueError, match="rope_parameters=") as err:
        check_config_overrides(ModelArguments(model_type=model_type, config_overrides=override))
    suggested = re.search(r"pass (rope_parameters=\{.*\})\.$", str(err.value)).group(1)
    args = ModelArguments(model_type=model_type, config_overrides=suggested)
    check_config_overrides(args)
    rope = fresh_config(args, 256, 32).rope_parameters
    assert {k: rope[k] for k in expected} == expected, json.dumps(rope)


def _suggested(model_type, override):
    with pytest.raises(ValueError, match="rope_parameters") as err:
        check_config_overrides(ModelArguments(model_type=model_type, config_overrides=override))
    found = re.search(r"pass rope_parameters=(\{.*\})\.$", str(err.value))
    return str(err.value), (json.loads(found.group(1)) if found else None)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # a null rope_scaling (no scaling) leaves the default; it was read as rope_theta=null
        ("rope_scaling=null", {"rope_theta": 10000.0, "rope_type": "default"}),
        # both legacy fields given: both are in the value (the refusal of the first one dropped the second)
        (
            'rope_theta=500000.0,rope_scaling={"rope_type":"linear","factor":2.0}',
            {"rope_theta": 500000.0, "rope_type": "linear", "factor": 2.0},
        ),
        # transformers 4's "type" key of rope_scaling is rope_type (kept as "type", the scaling was not applied)
        ('rope_scaling={"type":"linear","factor":2.0}', {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}),
    ],
)
def test_the_suggested_rope_parameters_hold_every_legacy_rope_override_rv29(override, expected):
    _, value = _suggested("llama", override)
    assert value == expected
    args = ModelArguments(model_type="llama", config_overrides=f"rope_parameters={json.dumps(value)}")
    check_config_overrides(args)
    assert fresh_config(args, 256, 32).rope_parameters["rope_theta"] == expected["rope_theta"]


def test_a_per_layer_type_rope_config_gets_no_value_that_ignores_the_theta_rv29():
    # gemma3_text keeps one rope_parameters entry per layer type: the suggested value added a top-level rope_theta
    # that neither the sliding nor the full attention layers read (the config accepted it, the theta was not used)
    message, value = _suggested("gemma3_text", "rope_theta=500000.0")
    assert value is None and "sliding_attention" in message and "full_attention" in message
