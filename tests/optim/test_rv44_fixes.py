"""rv44: an optimizer state saved before transposed convolutions rotated per output channel (lf43) must still resume.

Before lf43, `rotational_param_groups` put a `nn.ConvTranspose*d` weight with `neuron_dim=0` into the rotational group
of the other weights; now it sits in the `neuron_dim=1` group, so a LionAR / RotationalWrapper state of a model with
both kinds (saved with two groups) no longer loaded into the optimizer built from the same model (three groups):
torch's raw "loaded state dict has a different number of parameter groups". It now resumes with the layout it was
saved with (torch restores the saved groups' `neuron_dim=0`), bit for bit as the uninterrupted run, with a warning."""

import copy

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR, RotationalWrapper


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 4), nn.Unflatten(1, (4, 1, 1)), nn.ConvTranspose2d(4, 6, 3), nn.Flatten(), nn.Linear(54, 3)
    )


def _legacy_groups(model):
    """The groups `rotational_param_groups` built before lf43: every rotational weight with rows as neurons."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    biases = [p for p in model.parameters() if p.dim() < 2]
    return [
        {"params": weights, "weight_decay": 0.1, "rotational": True, "neuron_dim": 0},
        {"params": biases, "weight_decay": 0.0, "rotational": False, "neuron_dim": 0},
    ]


def _make(cls, params):
    options = {"lr": 1e-2, "weight_decay": 0.1}
    return cls(params, **options) if cls is LionAR else cls(params, inner="adamw", **options)


def _steps(model, opt, n, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(3, 4, generator=gen)).square().sum().backward()
        opt.step()


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_a_state_of_the_earlier_conv_transpose_layout_resumes_exactly(cls):
    reference = _model()
    opt = _make(cls, _legacy_groups(reference))
    _steps(reference, opt, 2, seed=1)
    saved_model, saved_opt = copy.deepcopy(reference.state_dict()), copy.deepcopy(opt.state_dict())
    _steps(reference, opt, 3, seed=2)

    resumed = _model()
    resumed.load_state_dict(saved_model)
    new = _make(cls, resumed)  # the groups of today's layout: the transposed weight in its own neuron_dim=1 group
    assert [g["neuron_dim"] for g in new.param_groups if g["rotational"]] == [0, 1]
    with pytest.warns(UserWarning, match="saved before transposed convolutions"):
        new.load_state_dict(saved_opt)
    assert [(len(g["params"]), g["neuron_dim"]) for g in new.param_groups] == [(3, 0), (3, 0)]
    _steps(resumed, new, 3, seed=2)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)

    again = _make(cls, _model())  # its own state (still the earlier layout) loads again
    with pytest.warns(UserWarning, match="saved before transposed convolutions"):
        again.load_state_dict(new.state_dict())


@pytest.mark.parametrize("cls", [LionAR, RotationalWrapper])
def test_a_state_of_another_model_is_still_refused(cls):
    other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.ConvTranspose1d(2, 2, 2))
    opt = _make(cls, [{"params": [other[0].weight], "weight_decay": 0.1, "rotational": True, "neuron_dim": 0}])
    new = _make(cls, _model())
    with pytest.raises(ValueError, match="parameter group"):
        new.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name", ["lion", "lion_a", "adamw"])
def test_lion_liona_and_the_adamw_baseline_resume_a_state_of_the_earlier_groups(name):
    """Lion, LionA and the warmup recipe's AdamW baseline take their groups from `rotational_param_groups` too: a state
    saved with the transposed weight in the rotational `neuron_dim=0` group failed with torch's group-count error."""
    from hf_ext.optim import Lion, LionA
    from hf_ext.optim.warmup_trainer import make_normalized_optimizer

    def build(params, model):
        if name == "adamw":
            reference = make_normalized_optimizer(model, "adamw", lr=1e-2, weight_decay=0.1)
            if params is model:
                return reference
            return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        return {"lion": Lion, "lion_a": LionA}[name](params, lr=1e-2, weight_decay=0.1)

    reference = _model()
    opt = build(_legacy_groups(reference), reference)
    _steps(reference, opt, 2, seed=1)
    saved_model, saved_opt = copy.deepcopy(reference.state_dict()), copy.deepcopy(opt.state_dict())
    _steps(reference, opt, 3, seed=2)

    resumed = _model()
    resumed.load_state_dict(saved_model)
    new = build(resumed, resumed)
    assert len(new.param_groups) == 3
    with pytest.warns(UserWarning, match="saved before transposed convolutions"):
        new.load_state_dict(saved_opt)
    _steps(resumed, new, 3, seed=2)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
