"""Bad-input audit br18, neuralgrok: helpers that returned plausible numbers for bad input; raw errors."""

import math

import numpy as np
import pytest

from hf_ext.neuralgrok import NeuralGrokConfig, arithmetic_vocab_size, steps_to_accuracy


@pytest.mark.parametrize(
    "p, error",
    [
        (1.5, TypeError),
        (math.nan, TypeError),
        (True, TypeError),
        ("97", TypeError),
        (None, TypeError),
        (-1, ValueError),
        (0, ValueError),
        (1, ValueError),
    ],
)
def test_arithmetic_vocab_size_refuses_bad_modulus(p, error):
    """p=1.5 returned 3.5, p=nan nan, p=-1 1 and p=True 3."""
    with pytest.raises(
        error, match=r"p must be an int \(the modulus" if error is TypeError else r"p=-?\d+ must be >= 2"
    ):
        arithmetic_vocab_size("a+b", p)


def test_arithmetic_vocab_size_valid_moduli():
    assert arithmetic_vocab_size("a+b", 97) == 99
    assert arithmetic_vocab_size("a*c+b*d-e", np.int64(7)) == 11
    assert type(arithmetic_vocab_size("a+b", np.int64(97))) is int


@pytest.mark.parametrize("target", [1.5, math.nan, -1, 0.0, None, "0.9"])
def test_steps_to_accuracy_refuses_target_outside_unit_interval(target):
    """target=1.5 or nan returned None ("never reached") and target=-1 the first step."""
    with pytest.raises(ValueError, match=r"target=.* must be in \(0, 1\]"):
        steps_to_accuracy([10, 20], [0.5, 1.0], target)


def test_steps_to_accuracy_valid_targets():
    assert steps_to_accuracy([10, 20], [0.5, 1.0], 1.0) == 20
    assert steps_to_accuracy([10, 20], [0.5, 1.0], np.float32(0.4)) == 10


# -- errors naming the argument (br18 #6) -------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [32, "32 32", None, [], [32, 0], [32.0]])
def test_amplifier_hidden_dims_must_be_a_list_of_positive_ints(tmp_path, dims):
    """amplifier_hidden_dims=32 failed with "'int' object is not iterable"."""
    with pytest.raises(ValueError, match=r"amplifier_hidden_dims=.* must be a list of positive ints"):
        NeuralGrokConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, amplifier_hidden_dims=dims)
