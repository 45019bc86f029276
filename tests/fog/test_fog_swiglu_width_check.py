"""`FogConfig.fog(swiglu_intermediate_size=...)` is checked before FOG's 1.5x ungated width is computed from it: a float
or a bool was rounded into a width silently, a string or NaN failed with a bare TypeError / ValueError and -1 was
reported as `intermediate_size ... got 0`, naming neither the argument nor the value passed."""

import re

import pytest

from hf_ext.models.fog import FogConfig

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)


@pytest.mark.parametrize("recipe", ["fog", "llama_baseline"])
@pytest.mark.parametrize("value", [64.5, 64.0, True, "64", float("nan"), 0, -1, [64]])
def test_a_bad_swiglu_intermediate_size_is_refused_by_name(recipe, value):
    with pytest.raises(
        ValueError, match=r"swiglu_intermediate_size must be a positive integer.*got " + re.escape(repr(value))
    ):
        getattr(FogConfig, recipe)(**TINY, swiglu_intermediate_size=value)


def test_a_good_swiglu_intermediate_size_still_gives_the_widths():
    assert FogConfig.fog(**TINY, swiglu_intermediate_size=64).intermediate_size == 96  # ungated: 1.5x
    assert FogConfig.fog(**TINY, swiglu_intermediate_size=65).intermediate_size == 112  # rounded up to 16
    assert FogConfig.fog(**TINY, hidden_act="swiglu", swiglu_intermediate_size=64).intermediate_size == 64
    assert FogConfig.llama_baseline(**TINY, swiglu_intermediate_size=64).intermediate_size == 64
    assert FogConfig.fog(**TINY, intermediate_size=48).intermediate_size == 48  # None: not checked
