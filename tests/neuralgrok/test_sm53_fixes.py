"""sm53: a gradient tensor with a NaN (or inf) entry in the normalisation-only control turns NaN, as in NeuralGrok's
transform; it used to be scaled by c / eps (1e30) on its finite entries."""

import pytest
import torch

from hf_ext.neuralgrok import GradNormOptimizer, NeuralAmplifier, NeuralGrokOptimizer


def _step(make, bad):
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = make([p, q])
    p.grad, q.grad = torch.tensor([1.0, bad, 2.0]), torch.tensor([3.0, 4.0])
    opt.step()
    return p, q


def _normalize(clip):
    return lambda ps: GradNormOptimizer(torch.optim.SGD(ps, lr=0.1), clip_norm=clip, track_entropy=False)


def _neuralgrok(clip):
    torch.manual_seed(0)
    return lambda ps: NeuralGrokOptimizer(
        torch.optim.SGD(ps, lr=0.1), NeuralAmplifier(), clip_norm=clip, track_entropy=False
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_a_non_finite_gradient_tensor_turns_nan_in_the_control_as_in_neuralgrok(bad, clip):
    """Without a clip only that tensor is NaN (the other keeps norm c); with one, every gradient is (the global norm is
    NaN). Before: the finite entries of the tensor came out ~1e30 and the weights ~-1e29."""
    for make in (_normalize(clip), _neuralgrok(clip)):
        p, q = _step(make, bad)
        assert torch.isnan(p.grad).all() and torch.isnan(p).all()
        if clip is None:
            assert torch.allclose(q.grad.norm(), torch.tensor(1.0), atol=1e-4) and torch.isfinite(q).all()
        else:
            assert torch.isnan(q.grad).all()


def test_finite_gradients_keep_norm_c():
    p, q = _step(_normalize(None), 5.0)
    assert torch.allclose(p.grad.norm(), torch.tensor(1.0)) and torch.allclose(q.grad.norm(), torch.tensor(1.0))
