"""Normalized optimizers' state dicts and loading through torch.distributed.checkpoint in one process. On 2 gloo ranks
(FSDP2 and DDP match one process on the whole batch, an FSDP2 checkpoint resumes exactly, CubicNewton refuses sharded
parameters): test_normalized_optimizers_under_fsdp2_and_ddp_match_one_process in tests/optim/test_two_rank_checks.py,
one launch shared with the other 2-rank checks of hf_ext.optim."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hf_ext.optim import LionAR, RotationalWrapper


def test_rotational_wrapper_state_dict_is_one_standard_mapping_and_loads_the_old_format():
    """One `state` for rotational and plain tensors (what torch.distributed.checkpoint saves); a state dict with the
    former separate 'inner' entry still resumes exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    data = [(torch.randn(3, 4), torch.randn(3, 2)) for _ in range(4)]

    def run(m, opt, batches):
        for x, y in batches:
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            opt.zero_grad()

    ref = copy.deepcopy(model)
    run(ref, RotationalWrapper(ref, lr=1e-2, weight_decay=0.1), data)
    half = copy.deepcopy(model)
    opt = RotationalWrapper(half, lr=1e-2, weight_decay=0.1)
    run(half, opt, data[:2])
    sd = opt.state_dict()
    assert "inner" not in sd and len(sd["state"]) == 4  # 2 rotational weights + 2 biases of the inner AdamW
    old = copy.deepcopy(sd)  # the former layout: plain tensors' state under 'inner'
    plain = {i: old["state"].pop(i) for i in list(old["state"]) if "norm" not in old["state"][i]}
    old["inner"] = {"state": plain, "param_groups": copy.deepcopy(old["param_groups"])}
    for state_dict in (sd, old):
        resumed = copy.deepcopy(half)
        opt2 = RotationalWrapper(resumed, lr=1e-2, weight_decay=0.1)
        opt2.load_state_dict(copy.deepcopy(state_dict))
        assert opt2.inner.state is opt2.state
        run(resumed, opt2, data[2:])
        for a, b in zip(resumed.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_rotational_wrapper_loads_a_state_dict_whose_groups_lack_newer_torch_options():
    """A state dict written by an older torch (groups without `fused`, `foreach`, `differentiable`, ...) loads into
    torch's AdamW, whose `__setstate__` fills the keys; the wrapper never ran it and failed in the inner step."""
    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        return model, RotationalWrapper(model.parameters(), inner="adamw", lr=1e-2, weight_decay=0.1)

    def step(model, opt):
        opt.zero_grad()
        model(torch.ones(3, 4)).pow(2).mean().backward()
        opt.step()

    model, opt = setup()
    step(model, opt)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for key in ("decoupled_weight_decay", "fused", "foreach", "differentiable", "capturable"):
            group.pop(key, None)
    step(model, opt)
    resumed_model, resumed = setup()
    step(resumed_model, resumed)  # the same first step, then the saved state
    resumed.load_state_dict(saved)
    step(resumed_model, resumed)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _bf16_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).to(torch.bfloat16)


_MAKERS = {
    "lionar": lambda m: LionAR(m, lr=1e-2, weight_decay=1.0),
    "rotational_adamw": lambda m: RotationalWrapper(m, inner="adamw", lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_loading_through_torch_distributed_checkpoint_leaves_the_loaded_weights_alone(name):
    """accelerate's `load_state` loads the model, then the optimizer; torch.distributed.checkpoint builds the
    optimizer's load template by stepping it at lr 0 with zero gradients on the just-loaded weights. That step must not
    re-centre them (bfloat16 weights moved by up to 2e-3 and the resumed run left the uninterrupted one)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    make = _MAKERS[name]
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 6, generator=g).bfloat16(), torch.randn(4, 3, generator=g).bfloat16()) for _ in range(4)]

    def run(m, opt, batches):
        for x, y in batches:
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            opt.zero_grad()

    model = _bf16_net()
    opt = make(model)
    run(model, opt, data[:2])
    saved_model = copy.deepcopy(get_model_state_dict(model))
    saved_optim = copy.deepcopy(get_optimizer_state_dict(model, opt))
    run(model, opt, data[2:])

    resumed = _bf16_net()
    opt2 = make(resumed)
    set_model_state_dict(resumed, saved_model)
    loaded = {k: v.clone() for k, v in resumed.state_dict().items()}
    template = get_optimizer_state_dict(resumed, opt2)  # the lr-0 template step
    assert template["state"], "no template step ran"
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, loaded[k]), k
    set_optimizer_state_dict(resumed, opt2, saved_optim)
    run(resumed, opt2, data[2:])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_first_step_at_lr_0_with_zero_gradient_defers_centring_to_the_next_step():
    """A run whose first step has lr 0 and an all-zero gradient (a warmup from 0 with a LoRA A under a zero B) centres
    the neurons one step later, on the same weights, and records their norms then."""
    model = nn.Sequential(nn.Linear(6, 10)).double()
    with torch.no_grad():
        model[0].weight.add_(0.5)  # far from zero-mean rows
    w = model[0].weight
    before = w.detach().clone()
    opt = LionAR(model, lr=1e-2, weight_decay=1.0)
    opt.param_groups[0]["lr"] = 0.0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(w, before) and opt.state[w]["norm_pending"] is True
    opt.param_groups[0]["lr"] = 1e-2
    model(torch.randn(3, 6, dtype=torch.float64)).pow(2).sum().backward()
    norms = before.norm(dim=1)
    opt.step()
    assert opt.state[w]["norm_pending"] is False
    torch.testing.assert_close(opt.state[w]["norm"].squeeze(1), norms, rtol=0, atol=1e-12)
    torch.testing.assert_close(w.detach().mean(dim=1), torch.zeros(10, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(w.detach().norm(dim=1), norms, rtol=0, atol=1e-12)


def test_a_state_without_norm_pending_counts_as_initialised():
    """A state written before `norm_pending` existed (or loaded without it) is initialised: its recorded norms stay
    and its weights are not re-centred (kills O2: `state.get("norm_pending", True)` re-initialises such states,
    overwriting the checkpoint's norms with the current weights' and centring them again)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10)).double()
    opt = LionAR(model, lr=1e-2, weight_decay=1.0)
    model(torch.randn(3, 6, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    w = model[0].weight
    state = opt.state[w]
    assert state["norm_pending"] is False
    sd = opt.state_dict()
    for s in sd["state"].values():
        s.pop("norm_pending", None)  # the older layout
    recorded = state["norm"].clone() * 2  # a norm the weights do not have: re-initialising would replace it
    for s in sd["state"].values():
        if "norm" in s:
            s["norm"] = recorded.clone()
    opt2 = LionAR(model, lr=1e-2, weight_decay=1.0)
    opt2.load_state_dict(sd)
    with torch.no_grad():
        w.add_(0.25)  # off-centre rows: a re-initialisation would centre them
    before = w.detach().clone()
    opt2.zero_grad()
    model(torch.randn(3, 6, dtype=torch.float64)).pow(2).sum().backward()
    opt2.param_groups[0]["lr"] = 0.0  # no rotation: only an (unwanted) initialisation could change anything
    opt2.step()
    torch.testing.assert_close(opt2.state[w]["norm"], recorded, rtol=0, atol=0)
    assert torch.equal(w.detach(), before)


def _off_centre_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10)).double()
    with torch.no_grad():
        model[0].weight.add_(0.5)  # far from zero-mean rows
    return model


def _assert_centred_now(opt, w, norms):
    assert opt.state[w]["norm_pending"] is False
    torch.testing.assert_close(opt.state[w]["norm"].squeeze(1), norms, rtol=0, atol=1e-12)
    torch.testing.assert_close(w.detach().mean(dim=1), torch.zeros(10, dtype=torch.float64), rtol=0, atol=1e-12)
    # centring keeps each neuron's norm (kills O10 where no rotation follows: lr 0, or a zero update)
    torch.testing.assert_close(w.detach().norm(dim=1), norms, rtol=0, atol=1e-12)


def test_a_first_step_at_lr_0_with_a_nonzero_gradient_centres_at_once():
    """Only lr 0 *and* an all-zero gradient marks DCP's load template; a warmup step at lr 0 with a real gradient
    initialises (centres) immediately (kills O3: `template = bool(lr == 0)` defers it, so the next forward pass
    runs on uncentred weights)."""
    model = _off_centre_linear()
    w = model[0].weight
    norms = w.detach().norm(dim=1).clone()
    opt = LionAR(model, lr=1e-2, weight_decay=1.0)
    opt.param_groups[0]["lr"] = 0.0
    model(torch.randn(3, 6, dtype=torch.float64)).pow(2).sum().backward()
    assert w.grad.abs().sum() > 0
    opt.step()
    _assert_centred_now(opt, w, norms)


def test_a_first_step_with_a_zero_gradient_at_a_positive_lr_centres_at_once():
    """An all-zero gradient at lr > 0 (a LoRA A under a zero B, without a warmup from 0) is a real first step, not
    the DCP template (kills O4: `template = _total(p.grad.abs()) == 0` defers the centring)."""
    model = _off_centre_linear()
    w = model[0].weight
    norms = w.detach().norm(dim=1).clone()
    opt = LionAR(model, lr=1e-2, weight_decay=1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    _assert_centred_now(opt, w, norms)


def test_one_element_neurons_are_not_centred_away():
    """A neuron of one element (a `Linear(1, n)` row) cannot be centred: it keeps its value (kills O8:
    `w.shape[1] > 0` centres it to 0, and the rescale cannot bring a zero row back, so the weights stay 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4)).double()
    w = model[0].weight
    before = w.detach().clone()
    opt = LionAR(model, lr=1e-2, weight_decay=1.0)
    model(torch.randn(3, 1, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    torch.testing.assert_close(w.detach().abs(), before.abs(), rtol=0, atol=1e-12)
    assert w.detach().abs().min() > 0


def test_column_neurons_keep_one_update_norm_ema_shape_from_the_template_step_on():
    """With `neuron_dim=1` (HF `Conv1D` columns) the update-norm EMA created at initialisation has the shape `_rotate`
    stores, `(1, neurons)`, so a DCP load template built from an lr-0 step matches a checkpoint written after real
    steps (kills O9: without the `view(1, n)` the template's EMA is `(n, 1)`)."""
    w = nn.Parameter(torch.randn(6, 5, dtype=torch.float64))
    template = LionAR([{"params": [w], "neuron_dim": 1}], lr=1e-2, update_norm_decay=0.9)
    template.param_groups[0]["lr"] = 0.0
    w.grad = torch.zeros_like(w)
    template.step()  # DCP's load template step
    w2 = nn.Parameter(w.detach().clone())
    trained = LionAR([{"params": [w2], "neuron_dim": 1}], lr=1e-2, update_norm_decay=0.9)
    w2.grad = torch.randn_like(w2)
    trained.step()
    assert template.state[w]["update_norm_ema"].shape == trained.state[w2]["update_norm_ema"].shape == (1, 5)
