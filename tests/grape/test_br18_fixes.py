"""Bad-input audit br18, grape: numpy scalars in GrapeConfig; errors naming the argument."""

import json
import math

import numpy as np
import pytest
import torch

from hf_ext.grape import (
    GrapeConfig,
    doge_domain_weights,
    doremi_domain_weights,
    ema_update,
    grape_domain_weights,
    grape_task_weights,
    resolve_step_size,
    smooth_weights,
)


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


# -- errors naming the argument (br18 #6) -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, value", [("export_mixture_file", 1), ("export_mixture_file", None), ("plot_file", True), ("plot_file", 3)]
)
def test_grape_config_file_names_must_be_strings(tmp_path, name, value):
    """export_mixture_file=1 / plot_file=True failed inside posixpath ("expected str, bytes or os.PathLike")."""
    with pytest.raises(ValueError, match=f"{name} must be a file name"):
        GrapeConfig(output_dir=str(tmp_path), report_to="none", **{name: value})


def test_grape_config_plot_file_may_be_empty_or_none(tmp_path):
    assert GrapeConfig(output_dir=str(tmp_path), report_to="none", plot_file=None).plot_file is None
    assert GrapeConfig(output_dir=str(tmp_path), report_to="none", plot_file="").plot_file == ""


W, S = [0.25, 0.25, 0.5], [0.1, -0.2, 0.3]


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: grape_domain_weights(W, S, step_size=None), "step_size"),
        (lambda: grape_domain_weights(W, S, "1.5"), "step_size"),
        (lambda: grape_domain_weights(W, S, 1.5, smoothing="0.1"), "smoothing"),
        (lambda: grape_task_weights(W, S, 1.0, smoothing=None), "smoothing"),
        (lambda: smooth_weights(W, None), "smoothing"),
        (lambda: ema_update(1.0, 2.0, beta=None), "beta"),
        (lambda: ema_update(1.0, None, beta=0.5), "value"),
        (lambda: ema_update("1.0", 2.0, beta=0.5), "previous"),
        (lambda: resolve_step_size(None), "mu"),
        (lambda: resolve_step_size(2.0, "lr_scaled", "1e-3"), "learning_rate"),
        (lambda: doge_domain_weights(W, S, [1.0] * 3, learning_rate=None), "learning_rate"),
        (lambda: doge_domain_weights(W, S, [1.0] * 3, 1e-3, mu="0.01"), "mu"),
        (lambda: doge_domain_weights(W, S, [1.0] * 3, 1e-3, score_max=None), "score_max"),
        (lambda: doremi_domain_weights(W, S, eta=None), "eta"),
    ],
)
def test_grape_rules_name_non_numbers(call, name):
    """None / str values failed with "'<=' not supported ..." or "must be real number, not NoneType"."""
    with pytest.raises(TypeError, match=f"^{name} must be a real number"):
        call()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"learning_rate": 1e-3, "score_min": math.nan}, "score_min"),
        ({"learning_rate": 1e-3, "score_max": math.nan}, "score_max"),
    ],
)
def test_doge_blames_the_argument_not_the_scores(kwargs, name):
    """learning_rate=nan and score_min=nan were reported as "scores must be finite"."""
    with pytest.raises(ValueError, match=f"^{name} must be a (finite )?number"):
        doge_domain_weights(W, S, [1.0] * 3, **kwargs)


def test_resolve_step_size_refuses_nan_learning_rate():
    """A NaN learning rate passed the `< 0` check and made a NaN step."""
    with pytest.raises(ValueError, match="learning_rate, a finite number >= 0"):
        resolve_step_size(2.0, "lr_scaled", math.nan)


def test_grape_rules_accept_numpy_and_0d_tensor_numbers():
    a = grape_domain_weights(W, S, 1.5, smoothing=0.1)
    b = grape_domain_weights(W, S, np.float32(1.5), smoothing=torch.tensor(0.1, dtype=torch.float64))
    assert torch.allclose(a, b)
    assert ema_update(None, np.float64(2.0), np.float32(0.5)) == 2.0
