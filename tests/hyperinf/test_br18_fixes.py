"""Bad-input audit br18, hyperinf: numpy integers for InfluenceConfig's documented ints; errors naming the argument."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from hf_ext.hyperinf import InfluenceConfig, schulz_inverse, select_lowest_influence


@pytest.mark.parametrize("name", ["schulz_iterations", "lissa_iterations", "schulz_order", "max_exact_dim"])
def test_influence_config_takes_numpy_ints(name):
    """validate() refused schulz_iterations / lissa_iterations = np.int64(...) but accepted max_exact_dim."""
    config = InfluenceConfig(**{name: np.int64(3 if name == "schulz_order" else 30)})
    config.validate()
    assert type(getattr(config, name)) is int
    json.dumps({k: v for k, v in asdict(config).items() if "dtype" not in k})


def test_influence_config_converts_values_set_after_construction():
    config = InfluenceConfig()
    config.schulz_iterations, config.damping_scale = np.int64(5), np.float32(0.5)
    config.validate()
    assert type(config.schulz_iterations) is int and type(config.damping_scale) is float


@pytest.mark.parametrize("name", ["schulz_iterations", "lissa_iterations"])
@pytest.mark.parametrize("value", [np.float32(30.0), np.True_, 30.5])
def test_influence_config_still_refuses_non_integers(name, value):
    with pytest.raises((TypeError, ValueError), match=f"`{name}`"):
        InfluenceConfig(**{name: value}).validate()


# -- errors naming the argument (br18 #6) -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name", [({"alpha": "3"}, "alpha"), ({"tol": "1e-6"}, "tol"), ({"alpha": True}, "alpha")]
)
def test_schulz_inverse_names_non_numbers(kwargs, name):
    """alpha='3' failed with "'<' not supported between instances of 'int' and 'str'"."""
    with pytest.raises(ValueError, match=f"`{name}` must"):
        schulz_inverse(torch.eye(3), **kwargs)


@pytest.mark.parametrize("fraction", [None, "0.5", True])
def test_select_lowest_influence_names_fraction(fraction):
    """fraction=None failed with "'<' not supported between instances of 'float' and 'NoneType'"."""
    with pytest.raises(ValueError, match=r"`fraction` must be a number in \(0, 1\]"):
        select_lowest_influence(np.array([0.1, 0.2]), fraction=fraction)
