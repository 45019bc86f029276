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
