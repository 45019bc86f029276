"""Bad-input audit br18, grape: numpy scalars in GrapeConfig."""

import json

import numpy as np
import pytest

from hf_ext.grape import GrapeConfig


@pytest.mark.parametrize(
    "name, value, python_type",
    [
        ("domain_step_size", np.float32(1.5), float),
        ("task_step_size", np.float64(5.0), float),
        ("task_smoothing", np.float32(0.001), float),
        ("domain_smoothing", np.float32(0.0), float),
        ("ema_beta", np.float32(0.9), float),
        ("doremi_eta", np.float32(1.0), float),
        ("doremi_smoothing", np.float32(1e-4), float),
        ("block_size", np.int64(128), int),
        ("reweight_domains_every", np.int64(100), int),
        ("reweight_tasks_every", np.int32(0), int),
        ("reweight_batch_size", np.int64(16), int),
        ("reweight_mini_batch_size", np.int64(8), int),
        ("samples_per_epoch", np.int64(64), int),
    ],
)
def test_grape_config_takes_numpy_scalars_as_python_values(tmp_path, name, value, python_type):
    """Floats were stored as numpy (to_json_string() failed); ints such as block_size=np.int64(128) were refused."""
    config = GrapeConfig(output_dir=str(tmp_path), report_to="none", **{name: value})
    assert type(getattr(config, name)) is python_type
    assert json.loads(config.to_json_string())[name] == pytest.approx(float(value))


@pytest.mark.parametrize("name, value", [("block_size", np.float32(128.0)), ("ema_beta", np.True_)])
def test_grape_config_still_refuses_wrong_kinds(tmp_path, name, value):
    with pytest.raises((TypeError, ValueError), match=name):
        GrapeConfig(output_dir=str(tmp_path), report_to="none", **{name: value})
