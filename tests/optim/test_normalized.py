"""Update-rule invariants of Lion, LionA, LionAR and RotationalWrapper."""

import copy
import math

import pytest
import torch
from torch import nn

from hf_ext.optim import Lion, LionA, LionAR, RotationalWrapper, equilibrium_angle, rotational_param_groups


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    y = torch.randn(32, 4, generator=g)
    return ((model(x) - y) ** 2).mean()


def _step(model, opt, seed=0):
    opt.zero_grad()
    _loss(model, seed).backward()
    opt.step()


def _row_angles(a, b):
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return torch.arccos(cos.clamp(-1, 1))


def test_grouping_splits_rotational_and_plain():
    model = TinyNet()
    groups = rotational_param_groups(model, 0.1)
    rot = [p for g in groups if g["rotational"] for p in g["params"]]
    plain = [p for g in groups if not g["rotational"] for p in g["params"]]
    assert {id(p) for p in rot} == {id(model.fc1.weight), id(model.fc2.weight)}
    assert {id(p) for p in plain} == {
        id(model.fc1.bias),
        id(model.fc2.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }
    assert all(g["weight_decay"] == 0.0 for g in groups if not g["rotational"])


@pytest.mark.parametrize("nesterov,ibc", [(False, False), (True, True)])
def test_lion_ar_keeps_norms_and_rotates_by_target_angle(nesterov, ibc):
    torch.manual_seed(0)
    model = TinyNet()
    opt = LionAR(model, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.99), nesterov=nesterov, inverse_bias_correction=ibc)
    _step(model, opt, 0)  # first step: centring + norm recorded
    w0 = model.fc1.weight.detach().clone()
    norms = opt.state[model.fc1.weight]["norm"].squeeze(1)
    _step(model, opt, 1)
    w1 = model.fc1.weight.detach()
    torch.testing.assert_close(w1.norm(dim=1), norms, atol=1e-6, rtol=0)
    target = equilibrium_angle("lion", 1e-3, 1.0, (0.9, 0.99)) * ((1 - 0.99**2) if ibc else 1.0)
    torch.testing.assert_close(
        _row_angles(w0.double(), w1.double()), torch.full((16,), target, dtype=torch.float64), atol=1e-5, rtol=1e-4
    )
    # zero-mean neurons stay zero-mean
    assert w1.mean(dim=1).abs().max() < 1e-6


def test_lion_ar_biases_and_gains_get_plain_lion():
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    opt_ar = LionAR(a, lr=1e-3, weight_decay=1.0)
    opt_lion = Lion([b.fc1.bias, b.fc2.bias, b.norm.weight, b.norm.bias], lr=1e-3, weight_decay=0.0)
    for s in range(3):
        _step(a, opt_ar, s)
        opt_lion.zero_grad()
        _loss(b, s).backward()
        opt_lion.step()
        # keep the weights identical so the gradients of the vectors match
        with torch.no_grad():
            b.fc1.weight.copy_(a.fc1.weight)
            b.fc2.weight.copy_(a.fc2.weight)
    for name in ("fc1.bias", "fc2.bias", "norm.weight", "norm.bias"):
        torch.testing.assert_close(a.get_parameter(name), b.get_parameter(name))


def test_lion_ar_explicit_angle_and_schedule_scaling():
    torch.manual_seed(0)
    model = TinyNet()
    opt = LionAR(model, lr=1e-3, angle=0.05, zero_mean=False)
    w0 = model.fc2.weight.detach().clone()
    for g in opt.param_groups:
        g["lr"] = g["lr"] * 0.5  # what an LR scheduler does
    _step(model, opt)
    ang = _row_angles(w0.double(), model.fc2.weight.detach().double())
    torch.testing.assert_close(ang, torch.full_like(ang, 0.025), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.fc2.weight.norm(dim=1), w0.norm(dim=1), atol=1e-6, rtol=0)


def test_lion_ar_conv1d_columns_are_neurons():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    groups = rotational_param_groups(model, 1.0)
    transposed = [p for g in groups if g["neuron_dim"] == 1 for p in g["params"]]
    assert id(model.transformer.h[0].attn.c_attn.weight) in {id(p) for p in transposed}
    opt = LionAR(model, lr=1e-3, weight_decay=1.0)
    ids = torch.randint(0, 64, (2, 16))
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        if _ == 0:
            opt.step()
            w = model.transformer.h[0].mlp.c_fc.weight  # (in=32, out=128): 128 neurons = columns
            col_norms = w.detach().norm(dim=0).clone()
            w0 = w.detach().clone()
        else:
            opt.step()
    torch.testing.assert_close(w.detach().norm(dim=0), col_norms, atol=1e-6, rtol=0)
    assert opt.state[w]["norm"].shape == (128, 1)
    ang = _row_angles(w0.t().double(), w.detach().t().double())
    torch.testing.assert_close(
        ang,
        torch.full_like(ang, opt.group_angle(next(g for g in opt.param_groups if g["neuron_dim"] == 1))),
        atol=1e-5,
        rtol=1e-4,
    )


def test_lion_a_update_norm_is_exact():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(10, 7))
    opt = LionA([p], lr=0.01, weight_decay=0.0)
    g = torch.randn(10, 7)
    g[0, :5] = 0.0  # zero gradient entries: plain Lion's update would be shorter
    before = p.detach().clone()
    p.grad = g
    opt.step()
    assert math.isclose(float((p.detach() - before).norm()), 0.01 * math.sqrt(70), rel_tol=1e-5)
    # with inverse bias correction and weight decay the decay part is separate and the sign part scales by 1 - b2^t
    q = nn.Parameter(torch.randn(5, 5))
    opt2 = LionA([q], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, inverse_bias_correction=True)
    before = q.detach().clone()
    q.grad = torch.randn(5, 5)
    opt2.step()
    sign_part = q.detach() - before * (1 - 0.01 * 0.1)
    assert math.isclose(float(sign_part.norm()), 0.01 * (1 - 0.99) * 5.0, rel_tol=1e-4)


def test_lion_matches_reference_rule():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    m = torch.zeros(6)
    ref = p.detach().clone()
    for _ in range(3):
        g = torch.randn(6)
        p.grad = g.clone()
        opt.step()
        c = 0.9 * m + 0.1 * g
        ref = ref * (1 - 0.05) - 0.1 * torch.sign(c)
        m = 0.99 * m + 0.01 * g
    torch.testing.assert_close(p.detach(), ref)


@pytest.mark.parametrize("inner", ["adamw", "lion", "sgdm"])
def test_rotational_wrapper_exact_angle_and_plain_vectors(inner):
    torch.manual_seed(0)
    model = TinyNet()
    ref = TinyNet()
    ref.load_state_dict(model.state_dict())
    opt = RotationalWrapper(model, inner=inner, lr=1e-3, weight_decay=0.1, update_norm_decay=0.0)
    _step(model, opt, 0)
    w0 = model.fc1.weight.detach().clone()
    _step(model, opt, 1)
    w1 = model.fc1.weight.detach()
    torch.testing.assert_close(w1.norm(dim=1), opt.state[model.fc1.weight]["norm"].squeeze(1), atol=1e-6, rtol=0)
    target = opt.group_angle(opt.param_groups[0])
    ang = _row_angles(w0.double(), w1.double())
    torch.testing.assert_close(ang, torch.full_like(ang, target), atol=1e-5, rtol=1e-4)
    # vectors: the inner optimizer's plain step (wd 0) — compare with a torch optimizer on the same vectors
    assert opt.inner.param_groups is opt.param_groups
    assert not torch.equal(model.fc1.bias, ref.fc1.bias)


def test_rotational_wrapper_vectors_match_inner_adamw():
    torch.manual_seed(0)
    a = TinyNet()
    b = TinyNet()
    b.load_state_dict(a.state_dict())
    opt = RotationalWrapper(a, inner="adamw", lr=1e-2, weight_decay=0.1)
    vec = [b.fc1.bias, b.fc2.bias, b.norm.weight, b.norm.bias]
    ref = torch.optim.AdamW(vec, lr=1e-2, weight_decay=0.0)
    for s in range(3):
        _step(a, opt, s)
        ref.zero_grad()
        _loss(b, s).backward()
        ref.step()
        with torch.no_grad():
            b.fc1.weight.copy_(a.fc1.weight)
            b.fc2.weight.copy_(a.fc2.weight)
    for name in ("fc1.bias", "norm.weight"):
        torch.testing.assert_close(a.get_parameter(name), b.get_parameter(name))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: LionAR(
            m, lr=1e-3, weight_decay=1.0, nesterov=True, inverse_bias_correction=True, snr_correction=True
        ),
        lambda m: LionA(m, lr=1e-3, snr_correction=True),
        lambda m: RotationalWrapper(m, inner="adamw", lr=1e-3, weight_decay=0.1),
    ],
)
def test_state_dict_round_trip_continues_identically(make, tmp_path):
    from hf_ext.optim import load_optimizer_state, save_optimizer_state

    torch.manual_seed(0)
    a = TinyNet()
    opt_a = make(a)
    for s in range(3):
        _step(a, opt_a, s)
    b = TinyNet()
    b.load_state_dict(a.state_dict())
    opt_b = make(b)
    save_optimizer_state(opt_a, str(tmp_path))
    load_optimizer_state(opt_b, str(tmp_path))
    for s in range(3, 6):
        _step(a, opt_a, s)
        _step(b, opt_b, s)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=n)


def test_snr_correction_shrinks_coherent_steps():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(8, 8))
    opt = LionA([p], lr=0.01, snr_correction=True, betas=(0.9, 0.9))
    g = torch.randn(8, 8)
    for _ in range(20):  # identical gradients: no noise, SNR -> infinity
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
    assert float((p.detach() - before).norm()) < 0.01 * 8 * 0.01
    assert opt.state[p]["snr"] > 1e4


@pytest.mark.parametrize(
    "ctor,match",
    [
        (lambda ps: LionAR(ps, lr=-1.0), "lr"),
        (lambda ps: LionAR(ps, lr=1e-3, weight_decay=0.0), "weight_decay"),
        (lambda ps: LionAR(ps, lr=1e-3, betas=(1.0, 0.9)), "betas"),
        (lambda ps: LionAR(ps, lr=1e-3, angle=2.0), "angle"),
        (lambda ps: LionAR(ps, lr=1e-3, update_norm_decay=1.5), "update_norm_decay"),
        (lambda ps: LionA(ps, lr=1e-3, weight_decay=-0.1), "weight_decay"),
        (lambda ps: Lion(ps, lr=0.0), "lr"),
        (lambda ps: RotationalWrapper(ps, inner="adam"), "inner"),
        (lambda ps: RotationalWrapper(ps, inner="sgdm", momentum=0.0), "momentum"),
    ],
)
def test_invalid_hyperparameters(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor([nn.Parameter(torch.randn(3, 3))])


def test_equilibrium_angle_formulas():
    assert math.isclose(equilibrium_angle("adamw", 1e-3, 0.1, (0.9, 0.95)), math.sqrt(2e-4 * 0.1 / 1.9))
    assert math.isclose(equilibrium_angle("sgdm", 0.1, 1e-4, momentum=0.9), math.sqrt(2e-5 / 1.9))
    with pytest.raises(ValueError, match="kind"):
        equilibrium_angle("adam", 1e-3, 0.1)


def _lion_equilibrium_rotation(betas, lr=1e-3, wd=1.0, n=1000, steps=6000, seed=0):
    """Mean per-step angle of a vector trained by our `Lion` on Gaussian gradients orthogonal to it (scale-invariant
    weights), measured over the second half of the run."""
    g = torch.Generator().manual_seed(seed)
    # start near the sign update's equilibrium norm sqrt(lr n / (2 wd)), so the second half is in equilibrium
    w = nn.Parameter(torch.randn(n, dtype=torch.float64, generator=g) * math.sqrt(lr / (2 * wd)))
    opt = Lion([w], lr=lr, weight_decay=wd, betas=betas)
    angles = []
    for t in range(steps):
        grad = torch.randn(n, dtype=torch.float64, generator=g)
        with torch.no_grad():
            w.grad = grad - w * (grad @ w) / (w @ w)
            before = w.detach().clone()
        opt.step()
        if t >= steps // 2:
            cos = float(before @ w.detach() / (before.norm() * w.detach().norm()))
            angles.append(math.acos(min(1.0, cos)))
    return sum(angles) / len(angles)


def test_lion_equilibrium_angle_matches_a_simulated_equilibrium_at_practical_betas():
    """The Lion closed form (REQ's, with its sqrt(pi/2) factor) against the equilibrium our `Lion` reaches: formula /
    measured is 0.97 at the default betas and 1.04 at the recipe's 0.98 (also with n 4000, 30k steps, 3 seeds). It is
    only an approximation: with no momentum the update is sign(g), whose norm is exactly sqrt(n), so the equilibrium
    is sqrt(2 lr wd) and the closed form is sqrt(pi/2) = 1.25x too high (checked here too, as documented)."""
    for betas, low, high in [((0.9, 0.99), 0.94, 1.01), ((0.98, 0.98), 1.0, 1.08)]:
        ratio = equilibrium_angle("lion", 1e-3, 1.0, betas) / _lion_equilibrium_rotation(betas)
        assert low < ratio < high, (betas, ratio)
    no_momentum = _lion_equilibrium_rotation((0.0, 0.0))
    assert math.isclose(no_momentum, math.sqrt(2 * 1e-3 * 1.0), rel_tol=0.02)
    assert math.isclose(
        equilibrium_angle("lion", 1e-3, 1.0, (0.0, 0.0)) / no_momentum, math.sqrt(math.pi / 2), rel_tol=0.02
    )


def _reference_direction(inner, grads, **kw):
    """The inner optimizer's update direction, the slow way: torch's own optimizer on a zero tensor with lr 1, no
    weight decay (what the wrapper used to do with clone / zero / copy-back)."""
    z = nn.Parameter(torch.zeros_like(grads[0]))
    cls = {"adamw": torch.optim.AdamW, "sgdm": torch.optim.SGD, "lion": Lion}[inner]
    opt = cls([z], lr=1.0, weight_decay=0.0, **kw)
    for g in grads:
        with torch.no_grad():
            z.zero_()
        z.grad = g.clone()
        opt.step()
    return -z.detach()


@pytest.mark.parametrize(
    "inner,kw",
    [
        ("adamw", dict(betas=(0.9, 0.95), eps=1e-3)),
        ("sgdm", dict(momentum=0.9, nesterov=True)),
        ("sgdm", dict(momentum=0.8, dampening=0.1)),
        ("lion", dict(betas=(0.9, 0.99), nesterov=True)),
    ],
)
def test_rotational_wrapper_step_matches_reference_rotation(inner, kw):
    """Each neuron moves on its sphere by exactly the target angle, in the plane of w and the inner optimizer's
    direction (mean and radial parts removed) — checked against torch's optimizer and a plain formula."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 10))
    opt = RotationalWrapper([w], inner=inner, lr=1e-3, weight_decay=0.1, update_norm_decay=0.0, **kw)
    grads = []
    for s in range(3):
        g = torch.randn(6, 10, generator=torch.Generator().manual_seed(100 + s))
        grads.append(g)
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
        if s == 0:
            continue  # the first step also centres the neurons
        u = _reference_direction(inner, grads, **kw).double()
        b = before.double()
        u = u - u.mean(1, keepdim=True)
        u = u - b * ((u * b).sum(1, keepdim=True) / (b * b).sum(1, keepdim=True))
        theta = opt.group_angle(opt.param_groups[0])
        r = b.norm(dim=1, keepdim=True)
        un = u.norm(dim=1, keepdim=True)
        # a neuron whose direction is all radial / constant (e.g. Lion signs all equal) does not move
        expected = torch.where(un > 1e-9, math.cos(theta) * b - math.sin(theta) * r * u / un.clamp_min(1e-300), b)
        torch.testing.assert_close(w.detach().double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("update_norm_decay", [0.0, 0.9])
@pytest.mark.parametrize("neuron_dim", [0, 1])
def test_rotational_adamw_fused_direction_matches_unfused_path(update_norm_decay, neuron_dim):
    """The AdamW direction comes from torch's fused AdamW kernel (negated, one pass) unless the group says
    `fused=False`; both paths give the same weights and moments, for rows-as-neurons and Conv1D (columns) layouts,
    and a checkpoint written by one path resumes on the other."""
    assert hasattr(torch, "_fused_adamw_")

    def make(fused):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(12, 20))
        b = nn.Parameter(torch.randn(20))
        groups = [
            dict(params=[w], neuron_dim=neuron_dim, rotational=True),
            dict(params=[b], weight_decay=0.0, rotational=False),
        ]
        kw = {} if fused else dict(fused=False)
        opt = RotationalWrapper(
            groups,
            inner="adamw",
            lr=1e-2,
            weight_decay=0.1,
            update_norm_decay=update_norm_decay,
            betas=(0.9, 0.95),
            **kw,
        )
        return w, b, opt

    def run(w, b, opt, steps):
        for s in steps:
            g = torch.Generator().manual_seed(10 + s)
            w.grad = torch.randn(12, 20, generator=g) + 0.5  # a mean and a radial part to remove
            b.grad = torch.randn(20, generator=g)
            opt.step()

    w_f, b_f, opt_f = make(True)
    w_u, b_u, opt_u = make(False)
    assert opt_f._uses_fused_direction(opt_f.param_groups[0], [w_f])
    assert not opt_u._uses_fused_direction(opt_u.param_groups[0], [w_u])
    run(w_f, b_f, opt_f, range(6))
    run(w_u, b_u, opt_u, range(6))
    torch.testing.assert_close(w_f, w_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b_f, b_u)
    for key in ("exp_avg", "exp_avg_sq", "norm"):
        torch.testing.assert_close(opt_f.state[w_f][key], opt_u.state[w_u][key], rtol=1e-5, atol=1e-7)
    assert opt_f.state[w_f]["step"] == opt_u.state[w_u]["step"] == 6
    # it moved: the rotation is not a no-op on either path
    torch.manual_seed(0)
    assert float((w_f.detach() - torch.randn(12, 20)).abs().max()) > 1e-2
    # resume across paths: fused state -> unfused optimizer and on
    w_x, b_x, opt_x = make(False)
    with torch.no_grad():
        w_x.copy_(w_f)
        b_x.copy_(b_f)
    opt_x.load_state_dict(copy.deepcopy(opt_f.state_dict()))  # as from disk: no shared moment tensors
    run(w_f, b_f, opt_f, range(6, 9))
    run(w_x, b_x, opt_x, range(6, 9))
    torch.testing.assert_close(w_f, w_x, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotational_adamw_fused_direction_on_cuda_matches_cpu(dtype):
    """On CUDA the fused AdamW kernel gives the rotational step the CPU path gives (float32 and bfloat16 weights)."""
    out = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(32, 48, dtype=torch.float32).to(device=device, dtype=dtype))
        opt = RotationalWrapper([w], inner="adamw", lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
        assert opt._uses_fused_direction(opt.param_groups[0], [w])
        for s in range(4):
            g = torch.randn(32, 48, generator=torch.Generator().manual_seed(s)) + 0.3
            w.grad = g.to(device=device, dtype=dtype)
            opt.step()
        out[device] = w.detach().float().cpu()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out["cuda"], out["cpu"], **tol)


def test_rotational_wrapper_mixed_groups_and_missing_gradients():
    """`RotationalWrapper(model.parameters())` decides rotational status per tensor (2+ dims with weight decay) and
    skips tensors that got no gradient, as the reference wrapper does."""
    torch.manual_seed(0)
    model = TinyNet()
    ref = TinyNet()
    ref.load_state_dict(model.state_dict())
    opt = RotationalWrapper(model.parameters(), inner="adamw", lr=1e-2, weight_decay=0.1, update_norm_decay=0.0)
    ref_opt = torch.optim.AdamW([ref.fc1.bias, ref.norm.weight, ref.norm.bias], lr=1e-2, weight_decay=0.1)
    for s in range(3):
        opt.zero_grad()
        _loss(model, s).backward()
        model.fc2.weight.grad = None  # e.g. a frozen or unused weight
        model.fc2.bias.grad = None
        fc2 = model.fc2.weight.detach().clone()
        opt.step()
        torch.testing.assert_close(model.fc2.weight.detach(), fc2, rtol=0, atol=0)
        ref_opt.zero_grad()
        _loss(ref, s).backward()
        ref_opt.step()
        with torch.no_grad():
            ref.fc1.weight.copy_(model.fc1.weight)
            ref.fc2.weight.copy_(model.fc2.weight)
    # vectors: the inner AdamW's ordinary step with the group's weight decay (reference wrapper semantics)
    for name in ("fc1.bias", "norm.weight"):
        torch.testing.assert_close(model.get_parameter(name), ref.get_parameter(name))
    # matrices: rotational (norm recorded and kept), fc2 never stepped
    w = model.fc1.weight
    torch.testing.assert_close(w.detach().norm(dim=1), opt.state[w]["norm"].squeeze(1), atol=1e-6, rtol=0)
    assert "norm" not in opt.state[model.fc2.weight]


def _snr_run(grad_fn, steps, betas=(0.9, 0.99)):
    torch.manual_seed(0)
    p = nn.Parameter(torch.zeros(64, 64))
    opt = LionA([p], lr=0.01, betas=betas, snr_correction=True)
    snrs, sizes = [], []
    for t in range(steps):
        before = p.detach().clone()
        p.grad = grad_fn(t)
        opt.step()
        snrs.append(opt.state[p]["snr"])
        sizes.append(float((p.detach() - before).norm()) / (0.01 * 64))  # the SNR factor (||u|| = sqrt(n) = 64)
    return snrs, sizes


def test_snr_correction_is_unbiased_on_pure_noise():
    """Pure-noise gradients have SNR 0: the factor stays ~1 from the first step (the stationary constant applied to
    the bias-corrected momentum used to report SNR ~1e33 at step 1 and act as a hidden warmup)."""
    g = torch.Generator().manual_seed(1)
    snrs, factors = _snr_run(lambda t: torch.randn(64, 64, generator=g), 30)
    assert factors[0] == pytest.approx(1.0, rel=1e-4) and snrs[0] == 0.0  # one gradient: no estimate, no correction
    assert max(snrs) < 0.3, snrs
    assert min(factors) > 0.85


def test_snr_correction_on_constant_and_known_snr_gradients():
    const = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    snrs, factors = _snr_run(lambda t: const, 6)
    assert factors[0] == pytest.approx(1.0, rel=1e-4)
    assert min(snrs[1:]) > 1e6 and max(factors[1:]) < 1e-3  # no noise at all: SNR -> infinity from step 2
    # mean mu with ||mu||^2 = sigma^2 (true SNR 1): the early estimates are unbiased, not inflated by stale momentum
    mu = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    mu = mu / mu.norm() * 64.0  # ||mu||^2 = 4096 = E||noise||^2
    ests = []
    for seed in range(6):
        g = torch.Generator().manual_seed(10 + seed)
        snrs, _ = _snr_run(lambda t, g=g: mu + torch.randn(64, 64, generator=g), 10)
        ests.append(sum(snrs[1:]) / len(snrs[1:]))
    assert 0.6 < sum(ests) / len(ests) < 1.6, ests


@pytest.mark.parametrize(
    "make",
    [
        lambda groups: RotationalWrapper(groups, inner="adamw", lr=1e-3, weight_decay=0.1),
        lambda groups: RotationalWrapper(groups, inner="lion", lr=1e-4, weight_decay=1.0, update_norm_decay=0.0),
        lambda groups: RotationalWrapper(groups, inner="sgdm", lr=1e-2, weight_decay=0.1, nesterov=True),
        lambda groups: LionAR(groups, lr=1e-4, weight_decay=1.0, nesterov=True, inverse_bias_correction=True),
    ],
    ids=["wrapper_adamw", "wrapper_lion", "wrapper_sgdm", "lion_ar"],
)
def test_conv1d_and_linear_layouts_give_identical_updates(make):
    """A `Conv1D` weight (in, out; neurons are columns, `neuron_dim=1`) and the same weight stored as an `nn.Linear`
    weight (out, in; rows, `neuron_dim=0`) receive the same update, transposed, step after step (the column path
    reduces differently but computes the same rotation)."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Parameter(torch.randn(24, 40, generator=g))  # 24 neurons of 40 inputs
    conv = nn.Parameter(lin.detach().t().contiguous())
    opt_lin = make([{"params": [lin], "neuron_dim": 0}])
    opt_conv = make([{"params": [conv], "neuron_dim": 1}])
    start = lin.detach().clone()
    for _ in range(4):
        grad = torch.randn(24, 40, generator=g)
        lin.grad, conv.grad = grad.clone(), grad.t().contiguous()
        opt_lin.step()
        opt_conv.step()
        torch.testing.assert_close(conv.detach().t(), lin.detach(), atol=1e-6, rtol=1e-5)
    assert (lin.detach() - start).abs().max() > 1e-3  # the weights did move
    torch.testing.assert_close(conv.detach().norm(dim=0), start.norm(dim=1), atol=1e-5, rtol=0)


def _zero_mean_weight(rows, cols, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return nn.Parameter(w - w.mean(dim=1, keepdim=True))  # centring at the first step is then a no-op


def test_lion_ar_add_param_group_gets_base_lr_and_is_validated():
    torch.manual_seed(0)
    model = TinyNet()
    opt = LionAR(model, lr=1e-3, weight_decay=1.0)
    n_groups = len(opt.param_groups)
    w = _zero_mean_weight(5, 8, seed=1)
    b = nn.Parameter(torch.zeros(5))
    for bad, match in [
        ({"params": [w]}, "neuron_dim"),  # a 2+-dim tensor without its layout, as at construction
        ({"params": [w], "neuron_dim": 0, "lr": float("inf")}, "lr"),
        ({"params": [w], "neuron_dim": 0, "betas": (0.9, 1.5)}, "betas"),
        ({"params": [b], "weight_decay": float("nan")}, "weight_decay"),
        ({"params": [w], "neuron_dim": 0, "rotational": True, "weight_decay": 0.0}, "angle"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == n_groups
    opt.add_param_group({"params": [w], "neuron_dim": 0, "lr": 2e-3})
    opt.add_param_group({"params": [b], "rotational": False, "weight_decay": 0.0})
    assert opt.param_groups[-2]["base_lr"] == 2e-3 and opt.param_groups[-1]["base_lr"] == 1e-3
    _loss(model).backward()
    w.grad = torch.randn_like(w)
    b.grad = torch.randn_like(b)
    w0 = w.detach().clone()
    opt.step()
    # the added weight rotates by the Lion equilibrium angle of its own lr and keeps its row norms
    target = equilibrium_angle("lion", 2e-3, 1.0, (0.9, 0.99))
    ang = _row_angles(w0.double(), w.detach().double())
    torch.testing.assert_close(ang, torch.full_like(ang, target), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.detach().norm(dim=1), w0.norm(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.detach(), -1e-3 * torch.sign(0.1 * b.grad))  # plain Lion, first step


_INNER_REFERENCE = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "lion": lambda ps: Lion(ps, lr=1e-2, weight_decay=0.1),
    "sgdm": lambda ps: torch.optim.SGD(ps, lr=1e-2, weight_decay=0.1, momentum=0.9),
}


@pytest.mark.parametrize("inner", ["adamw", "lion", "sgdm"])
def test_rotational_wrapper_add_param_group_gets_inner_defaults(inner):
    torch.manual_seed(0)
    model = TinyNet()
    opt = RotationalWrapper(model, inner=inner, lr=1e-2, weight_decay=0.1, update_norm_decay=0.0)
    n_groups = len(opt.param_groups)
    w = _zero_mean_weight(5, 8, seed=2)
    b = nn.Parameter(torch.randn(5))
    with pytest.raises(ValueError, match="neuron_dim"):
        opt.add_param_group({"params": [w]})
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [b], "lr": -1.0})
    opt.add_param_group({"params": [w], "neuron_dim": 0})
    opt.add_param_group({"params": [b]})
    assert opt.inner.param_groups is opt.param_groups and len(opt.param_groups) == n_groups + 2
    b_ref = nn.Parameter(b.detach().clone())
    ref = _INNER_REFERENCE[inner]([b_ref])
    w0 = w.detach().clone()
    for s in range(2):
        opt.zero_grad()
        _loss(model, s).backward()
        w.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(10 + s))
        b.grad = torch.randn(b.shape, generator=torch.Generator().manual_seed(20 + s))
        b_ref.grad = b.grad.clone()
        opt.step()
        ref.step()
    # the added vector gets the inner optimizer's own step with its defaults (betas / momentum / eps)
    torch.testing.assert_close(b.detach(), b_ref.detach())
    # the added weight is rotational: row norms kept, rotated by two equilibrium angles at most
    torch.testing.assert_close(w.detach().norm(dim=1), w0.norm(dim=1), atol=1e-6, rtol=0)
    ang = _row_angles(w0.double(), w.detach().double())
    assert bool((ang > 0).all()) and bool((ang <= 2 * opt.group_angle(opt.param_groups[-2]) + 1e-6).all())


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: Lion(ps, lr=1e-2),
        lambda ps: LionA(ps, lr=1e-2),
        lambda ps: LionAR(ps, lr=1e-2, angle=0.1),
        lambda ps: RotationalWrapper(ps, inner="lion", angle=0.1),
        lambda ps: RotationalWrapper(ps, inner="adamw", angle=0.1),
    ],
)
def test_sparse_gradients_are_refused_before_anything_changes(make):
    torch.manual_seed(0)
    dense = nn.Parameter(torch.randn(4, 3))
    emb = nn.Embedding(10, 3, sparse=True)
    opt = make([dense, emb.weight])
    (emb(torch.tensor([1, 2])) @ dense.T).sum().backward()
    assert emb.weight.grad.is_sparse and not dense.grad.is_sparse
    before = [dense.detach().clone(), emb.weight.detach().clone()]
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(dense.detach(), before[0]) and torch.equal(emb.weight.detach(), before[1])
    assert all(not s for s in opt.state.values())
    if isinstance(opt, RotationalWrapper):
        assert all(not s for s in opt.inner.state.values())


@pytest.mark.parametrize("cls", [Lion, LionA, LionAR, RotationalWrapper])
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(weight_decay=float("nan")), "weight_decay"),
        (dict(weight_decay=float("inf")), "weight_decay"),
        (dict(weight_decay="0.1"), "weight_decay"),
        (dict(lr=float("inf")), "lr"),
        (dict(lr=float("nan")), "lr"),
    ],
)
def test_non_finite_hyperparameters_are_refused(cls, kw, match):
    base = {"lr": 1e-3, "angle": 0.1} if cls in (LionAR, RotationalWrapper) else {"lr": 1e-3}
    with pytest.raises(ValueError, match=match):
        cls([nn.Parameter(torch.randn(3, 3))], **{**base, **kw})


@pytest.mark.parametrize("cls", [Lion, LionA, LionAR, RotationalWrapper])
@pytest.mark.parametrize(
    "group,match",
    [
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -0.5}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"betas": (0.9, 1.5)}, "betas"),
    ],
)
def test_param_group_values_are_validated_like_constructor_arguments(cls, group, match):
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=match):
        cls([{"params": [p], "rotational": False, **group}], lr=1e-3)


def test_zero_initialised_weights_train_in_the_plain_group_and_are_refused_as_rotational():
    """A rotation keeps each neuron's norm, so a weight that starts at zero (LoRA's B) would never move: the model
    path puts it in the plain group, where LoRA then trains; an explicit rotational group holding it is refused at the
    first step with the fix, before any weight is changed."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.optim import LionAR, RotationalWrapper, rotational_param_groups

    def lora_model():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))

    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    for make in (lambda m: LionAR(m, lr=1e-3, weight_decay=1.0), lambda m: RotationalWrapper(m, inner="adamw", lr=1e-3)):
        model = lora_model()
        names = {id(p): n for n, p in model.named_parameters()}
        groups = rotational_param_groups(model, 1.0)
        rot = [names[id(p)] for g in groups if g["rotational"] for p in g["params"]]
        assert rot and all("lora_A" in n for n in rot)  # B (all zero) is plain
        opt = make(model)
        for _ in range(5):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        assert all(float(p.norm()) > 0 for n, p in model.named_parameters() if "lora_B" in n)

    model = lora_model()
    b_weights = [p for n, p in model.named_parameters() if "lora_B" in n]
    opt = LionAR([{"params": b_weights, "rotational": True, "neuron_dim": 0}], lr=1e-3)
    model(input_ids=ids, labels=ids).loss.backward()
    with pytest.raises(ValueError, match="neuron\\(s\\) of norm 0 with a nonzero gradient.*plain group"):
        opt.step()
    assert all(float(p.norm()) == 0 for p in b_weights)  # no weight moved


def test_a_zero_neuron_without_gradient_stays_zero_and_is_not_refused():
    """A zero row that gets no gradient (an embedding's padding row in a rotational group) is not stuck: it stays zero
    and the other rows rotate, as before."""
    from hf_ext.optim import LionAR

    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 6))
    with torch.no_grad():
        w[2] = 0
    opt = LionAR([{"params": [w], "rotational": True, "neuron_dim": 0}], lr=1e-2)
    for _ in range(3):
        g = torch.randn(4, 6)
        g[2] = 0
        w.grad = g
        opt.step()
    assert float(w[2].abs().max()) == 0 and float(w[0].norm()) > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: LionAR(ps, lr=1e-3, weight_decay=1.0),
        lambda ps: RotationalWrapper(ps, inner="adamw", lr=1e-3, weight_decay=1.0),
        lambda ps: RotationalWrapper(ps, inner="sgdm", lr=1e-3, weight_decay=1.0),
    ],
)
def test_a_zero_neuron_is_refused_before_any_tensor_changes(make):
    """The refusal used to come per tensor inside the update loop: the rotational weight before the zero-initialised
    one had already been centred and rotated (and the plain tensors stepped), and both counted a step, so the fix
    the message names (rebuild with the tensor in a plain group) started from moved weights."""
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(3, 4))  # an ordinary weight, first
    bias = nn.Parameter(torch.randn(4))  # plain: the inner optimizer's step (RotationalWrapper)
    z = nn.Parameter(torch.zeros(3, 4))  # zero-initialised, e.g. a LoRA B in a flat parameter list
    opt = make([a, bias, z])
    before = [t.detach().clone() for t in (a, bias, z)]
    a.grad, bias.grad, z.grad = torch.randn(3, 4), torch.randn(4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="neuron\\(s\\) of norm 0 with a nonzero gradient"):
        opt.step()
    assert all(torch.equal(t, b) for t, b in zip((a, bias, z), before))
    assert all(not s for s in opt.state.values())
    if isinstance(opt, RotationalWrapper):
        assert all(not s for s in opt.inner.state.values())
