"""ng42: `amplifier_outer_step` refuses, by name and before any work, arguments it used to take silently (a
meta-optimizer over other parameters than the amplifier's left it untrained) or fail on with a raw error (one batch
given where a list of batches is expected)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_ext.neuralgrok import NeuralAmplifier, amplifier_outer_step


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x, labels):
        return SimpleNamespace(loss=nn.functional.cross_entropy(self.linear(x), labels))


def _setup():
    torch.manual_seed(0)
    batch = {"x": torch.randn(4, 3), "labels": torch.tensor([0, 1, 2, 3])}
    return _Model(), NeuralAmplifier((4,)), batch


def test_a_meta_optimizer_without_the_amplifier_parameters_is_refused():
    model, amplifier, batch = _setup()
    before = [p.detach().clone() for p in amplifier.parameters()]
    meta = torch.optim.Adam(model.parameters(), lr=1e-2)  # the model's, by mistake: the amplifier never moved
    with pytest.raises(ValueError, match="meta_optimizer does not hold the amplifier's parameters"):
        amplifier_outer_step(amplifier, meta, model, [batch], [batch], virtual_lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, amplifier.parameters()))
    # over the amplifier (and more) it trains
    meta = torch.optim.Adam([*amplifier.parameters(), *model.parameters()], lr=1e-2)
    amplifier_outer_step(amplifier, meta, model, [batch], [batch], virtual_lr=0.1)
    assert any(not torch.equal(a, b) for a, b in zip(before, amplifier.parameters()))


@pytest.mark.parametrize("which", ["inner_batches", "outer_batches"])
def test_one_batch_instead_of_a_list_of_batches_is_refused_by_name(which):
    model, amplifier, batch = _setup()
    kwargs = {"inner_batches": [batch], "outer_batches": [batch], which: batch}
    with pytest.raises(TypeError, match=rf"{which} must be a sequence .* pass a list of batches"):
        amplifier_outer_step(amplifier, torch.optim.Adam(amplifier.parameters()), model, virtual_lr=0.1, **kwargs)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(amplifier=None), TypeError, "amplifier must be a NeuralAmplifier"),
        (dict(meta_optimizer=None), TypeError, "meta_optimizer must be a torch.optim.Optimizer"),
        (dict(model=None), TypeError, "model must be a torch.nn.Module"),
        (dict(model=nn.Linear(3, 4).requires_grad_(False)), ValueError, "model has no trainable parameter"),
        (dict(outer_batches=[("x", "labels")]), TypeError, r"outer_batches\[0\] must be a batch"),
        (dict(weight_by_tokens="no"), TypeError, "weight_by_tokens="),
    ],
)
def test_other_bad_arguments_are_refused_by_name(change, error, match):
    model, amplifier, batch = _setup()
    kwargs = dict(
        amplifier=amplifier,
        meta_optimizer=torch.optim.Adam(amplifier.parameters()),
        model=model,
        inner_batches=[batch],
        outer_batches=[batch],
        virtual_lr=0.1,
    )
    with pytest.raises(error, match=match):
        amplifier_outer_step(**{**kwargs, **change})


def test_no_inner_batches_with_a_given_gradient_is_still_accepted():
    """With `g_hat` the inner batches are not read: `inner_batches=None` worked before the argument checks and still
    does (same result as `[]`); without `g_hat` it is refused by name."""
    model, _, batch = _setup()
    params = [p for p in model.parameters() if p.requires_grad]
    g_hat = torch.autograd.grad(model(**batch).loss, params)
    results = []
    for inner in ([], None):
        torch.manual_seed(1)
        amplifier = NeuralAmplifier((4,))
        meta = torch.optim.Adam(amplifier.parameters(), lr=1e-2)
        loss = amplifier_outer_step(amplifier, meta, model, inner, [batch], virtual_lr=0.1, g_hat=g_hat)
        results.append((loss, [p.detach().clone() for p in amplifier.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    amplifier = NeuralAmplifier((4,))
    with pytest.raises(TypeError, match="inner_batches"):
        amplifier_outer_step(amplifier, torch.optim.Adam(amplifier.parameters()), model, None, [batch], virtual_lr=0.1)


def test_a_frozen_amplifier_parameter_need_not_be_in_the_meta_optimizer():
    """mu42: only the amplifier's trainable parameters must be in the meta-optimizer (a frozen one need not be)."""
    model, amplifier, batch = _setup()
    params = list(amplifier.parameters())
    params[0].requires_grad_(False)  # frozen: the meta step never moves it
    trainable = [p for p in params if p.requires_grad]
    assert trainable and len(trainable) < len(params)
    before = [p.detach().clone() for p in params]
    meta = torch.optim.Adam(trainable, lr=1e-2)
    amplifier_outer_step(amplifier, meta, model, [batch], [batch], virtual_lr=0.1)
    assert torch.equal(params[0], before[0])
    assert any(not torch.equal(p, b) for p, b in zip(params[1:], before[1:]))
