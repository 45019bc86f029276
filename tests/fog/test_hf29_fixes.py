"""hf29 F3: `FogConfig` accepted `rope_parameters['partial_rotary_factor']` in [0, 1], but FOG rotates the whole head:
with the default RoPE the factor was ignored (the same logits as without it: another model than asked for, without a
word), and with a scaled RoPE type (whose tables transformers shortens) the forward failed with a bare shape error.
A factor other than 1 is now refused when the config is built, naming the key and the fix."""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.0},
    ],
)
def test_a_partial_rotary_factor_is_refused(rope):
    with pytest.raises(ValueError, match=r"partial_rotary_factor.*whole head.*Drop the key"):
        FogConfig(rope_parameters=rope, **SMALL)


def test_a_factor_of_one_is_the_whole_head_and_accepted():
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    torch.manual_seed(0)
    full = FogForCausalLM(FogConfig(rope_parameters=rope, **SMALL)).eval()
    torch.manual_seed(0)
    one = FogForCausalLM(FogConfig(rope_parameters={**rope, "partial_rotary_factor": 1.0}, **SMALL)).eval()
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(one(input_ids=ids).logits, full(input_ids=ids).logits, rtol=0, atol=0)
