"""Pass-30 lead fixes in optim.

`CubicNewtonTrainingArguments` had no flags for CubicNewton's `M_min` / `M_max`: `--cubic_M 1e-7` (below the default
floor 1e-6) was refused with "Need 0 < M_min <= M" and the hint that any keyword `x` is `--cubic_x`, but
`--cubic_M_min` did not exist, so no small M could be trained with the Trainer (op30, left alone; fixed by the lead).
`UpdateMetricsCallback(every_n_steps=True)` was accepted and measured every step."""

import pytest

from hf_ext.optim import CubicNewtonTrainingArguments


def _args(tmp_path, **kw):
    return CubicNewtonTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def test_a_small_m_is_accepted_with_its_floor_lowered(tmp_path):
    args = _args(tmp_path, cubic_M=1e-7, cubic_M_min=1e-8)
    kwargs = args.cubic_newton_kwargs()
    assert (kwargs["M"], kwargs["M_min"], kwargs["M_max"]) == (1e-7, 1e-8, 1e8)


def test_m_outside_the_bounds_is_refused_naming_the_flags(tmp_path):
    with pytest.raises(ValueError, match=r"M_min.*--cubic_x"):
        _args(tmp_path, cubic_M=1e-7)
    with pytest.raises(ValueError, match=r"M_max"):
        _args(tmp_path, cubic_M=10.0, cubic_M_max=5.0)


def test_the_bounds_reach_the_optimizer(tmp_path):
    import torch

    from hf_ext.optim import CubicNewton

    args = _args(
        tmp_path, cubic_M=1.0, cubic_M_min=0.5, cubic_M_max=2.0, cubic_M_rule="adaptive", cubic_momentum="none"
    )
    group = CubicNewton([torch.zeros(2, requires_grad=True)], **args.cubic_newton_kwargs()).param_groups[0]
    assert (group["M_min"], group["M_max"]) == (0.5, 2.0)


@pytest.mark.parametrize("value", [True, False, 0, 1.0])
def test_update_metrics_callback_refuses_a_bool_period(value):
    # True is an int: it was accepted and measured every step (op30, left alone; fixed by the lead)
    from hf_ext.optim.metrics import UpdateMetricsCallback

    with pytest.raises(ValueError, match="`every_n_steps` must be a positive int"):
        UpdateMetricsCallback(every_n_steps=value)
