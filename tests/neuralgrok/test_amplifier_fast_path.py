"""The amplifier's exact piecewise-linear fast path (issue 17.9): same scores, transforms and phi-gradients as the MLP."""

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    amplifier_outer_step,
    arithmetic_vocab_size,
    build_arithmetic_dataset,
)
from hf_ext.neuralgrok.amplifier import _interior_points


def _amplifier(dims, scale, seed):
    torch.manual_seed(seed)
    amp = NeuralAmplifier(dims).eval()
    with torch.no_grad():
        for i, param in enumerate(amp.parameters()):
            if scale == "trained":  # uneven magnitudes, a few dead units, biases pushed off zero
                param.mul_(torch.exp(torch.randn_like(param))).add_(0.3 * (i % 2) * torch.randn_like(param))
            else:
                param.mul_(scale)
    return amp


def _hard_inputs(amp, seed):
    """Gradient-like entries: zeros, tiny and huge magnitudes, values exactly at every knot, outside the knot range."""
    torch.manual_seed(seed)
    knots, _ = amp.linear_pieces()
    k = knots.float()
    return torch.cat(
        [
            torch.randn(4000) * torch.logspace(-30, 8, 4000),
            torch.zeros(50),
            k,
            k + k.abs().clamp_min(1) * 1e-6,
            k.min() - torch.rand(20) * 1e3,
            k.max() + torch.rand(20) * 1e3,
            torch.tensor([1e-38, -1e-38, 3e30, -3e30]),
        ]
    )


def _float64_scores(amp, x):
    net = NeuralAmplifier(amp.hidden_dims).double().eval()
    net.load_state_dict(amp.state_dict())
    with torch.no_grad():
        return net.net(x.double().view(-1, 1)).view(-1)


def _assert_scores_close(fast, reference, x, rtol=1e-5):
    """|fast - reference| <= rtol * (|reference| + |x| + typical |score|): relative, allowing the float32 MLP's own
    rounding (cancellation in near-zero scores, large inputs)."""
    reference = reference.double()
    err = (fast.double() - reference).abs()
    bound = rtol * (reference.abs() + x.double().abs() + reference.abs().median()) + 1e-30
    worst = int(torch.argmax(err / bound))
    assert bool((err <= bound).all()), (
        f"x={x[worst].item()!r}: fast {fast[worst].item()!r} vs {reference[worst].item()!r}"
    )


PARAMS = [((32, 32), 1.0, 0), ((32, 32), "trained", 1), ((32, 32), 5.0, 2), ((32, 32), 0.05, 3)]
PARAMS += [((64, 128, 64), 1.0, 4), ((64, 128, 64), "trained", 5), ((8,), 1.0, 6), ((16, 16, 16, 16), 2.0, 7)]


@pytest.mark.parametrize("dims,scale,seed", PARAMS)
def test_fast_scores_equal_the_mlp(dims, scale, seed):
    amp = _amplifier(dims, scale, seed)
    x = _hard_inputs(amp, seed)
    pieces = amp.fast_pieces(x.numel())
    assert pieces is not None
    with torch.no_grad():
        fast = amp._scores(x.view(-1, 1), pieces).view(-1)
        direct = amp.net(x.view(-1, 1)).view(-1)
    exact = _float64_scores(amp, x)
    _assert_scores_close(fast, exact, x, rtol=1e-6)  # the fast path is float64 inside: closer than the MLP itself
    _assert_scores_close(fast, direct, x)


@pytest.mark.parametrize("dims,scale,seed", PARAMS)
def test_knots_catch_every_kink(dims, scale, seed):
    """Dense points between consecutive knots: the MLP must be affine there (no kink the knot set missed)."""
    amp = _amplifier(dims, scale, seed)
    knots, masks = amp.linear_pieces()
    assert torch.all(knots[1:] > knots[:-1])
    edges = torch.cat(
        [knots[:1] - 10 * knots[:1].abs().clamp_min(1), knots, knots[-1:] + 10 * knots[-1:].abs().clamp_min(1)]
    )
    t = torch.linspace(0, 1, 33, dtype=torch.float64)[1:-1]
    x = (edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * t).reshape(-1)
    exact = _float64_scores(amp, x).view(len(edges) - 1, -1)
    # second differences of an affine function on equally spaced points vanish
    second = exact[:, 2:] - 2 * exact[:, 1:-1] + exact[:, :-2]
    scale_ = exact.abs().amax(dim=1, keepdim=True) + 1
    assert torch.all(second.abs() <= 1e-9 * scale_), f"kink missed in segment {int(second.abs().amax(1).argmax())}"
    # and the recorded ReLU pattern is the MLP's at those points
    slope, intercept = amp.affine_pieces(masks, torch.float64)
    segment = torch.arange(len(edges) - 1).repeat_interleave(t.numel())
    torch.testing.assert_close(
        (intercept[segment] + slope[segment] * x).view_as(exact), exact, rtol=1e-9, atol=1e-9 * float(scale_.max())
    )
    # every knot is a real kink (at least for these random weights): the slope changes across it
    assert torch.all((slope[1:] - slope[:-1]).abs() > 0)


@pytest.mark.parametrize("softmax_dim", [0, -1])
def test_transform_equals_the_per_tensor_mlp_path(softmax_dim):
    torch.manual_seed(0)
    amp = _amplifier((32, 32), "trained", 8)
    amp.softmax_dim = softmax_dim
    shapes = [(97, 64), (64,), (3,), (256, 64), (5, 4, 3)]
    grads = [torch.randn(s) * 10.0 ** torch.randint(-8, 1, ()).item() for s in shapes]
    grads[1][:10] = 0
    grads.append(torch.zeros(7, 2))  # an all-zero gradient stays zero
    params = [torch.nn.Parameter(torch.empty(g.shape)) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    assert amp.transform_(params) == len(params)
    for param, grad in zip(params, grads):
        with torch.no_grad():  # the old path: the MLP on each tensor, softmax, renormalise
            p = torch.softmax(amp.net(grad.reshape(-1, 1)), dim=softmax_dim).view_as(grad)
            w = p * grad
            expected = amp.c * w / torch.linalg.vector_norm(w).clamp_min(amp.eps)
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-7)


def test_fast_path_used_only_when_it_pays():
    amp = _amplifier((32, 32), 1.0, 0)
    knots, _ = amp.linear_pieces()
    assert amp.fast_pieces(4 * knots.numel()) is not None
    assert amp.fast_pieces(4 * knots.numel() - 4) is None  # more than n/4 knots
    drop = NeuralAmplifier((32, 32), dropout=0.1)
    assert drop.fast_pieces(10**6) is None  # training mode with dropout: the random MLP
    assert drop.eval().fast_pieces(10**6) is not None


def test_non_finite_entries_match_the_mlp():
    amp = _amplifier((32, 32), 1.0, 0)
    x = torch.cat([torch.randn(200) * 1e-3, torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0])])
    with torch.no_grad():
        fast = amp._scores(x.view(-1, 1), amp.fast_pieces(x.numel()))
        direct = amp.net(x.view(-1, 1))
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_outer_step_gradients_equal_the_mlp():
    """With autograd on, the fast path's scores and phi-gradients equal the direct MLP's (ReLU pattern is constant on
    each segment, so the local affine map is exact in phi too)."""
    amp = _amplifier((32, 32), "trained", 9)
    torch.manual_seed(9)
    grads = [torch.randn(300, 20) * 1e-2, torch.randn(500) * 3.0]
    target = [torch.randn(g.shape, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(grads)]
    exact = NeuralAmplifier(amp.hidden_dims).double()
    exact.load_state_dict(amp.state_dict())
    results = []
    for model, fast in ((amp, True), (amp, False), (exact, False), (exact, True)):
        model.zero_grad()
        pieces = model.fast_pieces(sum(g.numel() for g in grads)) if fast else None
        assert (pieces is not None) == fast
        inputs = [g.to(model.net[0].weight.dtype) for g in grads]
        outs = model.transform_many(inputs, pieces) if fast else [model(g, None) for g in inputs]
        loss = sum((out * t).sum() for out, t in zip(outs, target))
        loss.backward()
        results.append((loss.detach().double(), [p.grad.clone().double() for p in model.parameters()]))
    (loss_fast, grads_fast), (loss_direct, grads_direct), (loss_exact, grads_exact), (loss_fast64, grads_fast64) = (
        results
    )
    scale = max(float(g.abs().max()) for g in grads_exact)  # (the last bias has zero gradient: softmax is shift-free)
    # in float64 the fast path is the MLP's exact reformulation: values and phi-gradients agree to ~1e-12
    torch.testing.assert_close(loss_fast64, loss_exact, rtol=1e-12, atol=1e-12)
    for g_fast, g_exact in zip(grads_fast64, grads_exact):
        torch.testing.assert_close(g_fast, g_exact, rtol=1e-9, atol=1e-11 * scale)
    # in float32 both paths round: the loss to 1e-6, the gradients (sums with heavy cancellation) to ~1e-5 of the scale
    torch.testing.assert_close(loss_fast, loss_exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss_direct, loss_exact, rtol=1e-5, atol=1e-6)
    for g_fast, g_direct, g_exact in zip(grads_fast, grads_direct, grads_exact):
        torch.testing.assert_close(g_fast, g_exact, rtol=1e-3, atol=3e-5 * scale)
        torch.testing.assert_close(g_direct, g_exact, rtol=1e-3, atol=3e-5 * scale)


def test_interior_points_lie_inside_their_segments():
    knots = torch.tensor([-1e20, -1.0, 0.0, 1e-300, 5.0], dtype=torch.float64)
    points = _interior_points(knots)
    edges = torch.cat([torch.tensor([-float("inf")], dtype=torch.float64), knots, torch.tensor([float("inf")])])
    assert torch.all((points > edges[:-1]) & (points < edges[1:]))


def test_outer_step_fast_equals_direct(monkeypatch):
    """`amplifier_outer_step` through the fast path gives the MLP path's outer loss and phi-gradients."""
    ds = build_arithmetic_dataset("a+b", 11)
    inner = {k: torch.tensor(ds[:40][k]) for k in ("input_ids", "labels")}
    outer = {k: torch.tensor(ds[40:60][k]) for k in ("input_ids", "labels")}
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = GrokDecoderForCausalLM(
            GrokDecoderConfig(vocab_size=arithmetic_vocab_size("a+b", 11), hidden_size=32, num_attention_heads=4)
        )
        amp = _amplifier((32, 32), "trained", 10)
        if not fast:
            monkeypatch.setattr(amp, "fast_pieces", lambda n: None)
        else:
            assert amp.fast_pieces(sum(p.numel() for p in model.parameters())) is not None
        meta = torch.optim.SGD(amp.parameters(), lr=0.0)
        loss = amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=0.5)
        results.append((loss, [p.grad.clone() for p in amp.parameters()]))
    (loss_fast, grads_fast), (loss_direct, grads_direct) = results
    assert loss_fast == pytest.approx(loss_direct, rel=1e-5)
    scale = max(float(g.abs().max()) for g in grads_direct)
    for g_fast, g_direct in zip(grads_fast, grads_direct):
        torch.testing.assert_close(g_fast, g_direct, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("grad_mode", [False, True])
def test_tensors_beyond_one_chunk_are_transformed_in_few_batched_calls(monkeypatch, grad_mode):
    """More entries than `chunk_size` no longer fall back to one score call (and one softmax) per tensor: whole tensors
    are grouped, a tensor larger than a group goes alone; the result equals the per-tensor path, gradients included."""
    amp = _amplifier((32, 32), "trained", 3)
    amp.chunk_size = 1000  # groups of up to 16 000 entries
    torch.manual_seed(1)
    shapes = [(40, 50), (30,), (90, 100), (600, 30), (7,), (20000,), (64, 64)]  # 2000 + 30 + 9000 + 18000 + ...
    grads = [torch.randn(s) * 10.0 ** torch.randint(-6, 0, ()).item() for s in shapes]
    calls = []
    real_scores = NeuralAmplifier._scores

    def counting(self, column, pieces=None):
        calls.append((column.shape[0], pieces is not None))
        return real_scores(self, column, pieces)

    monkeypatch.setattr(NeuralAmplifier, "_scores", counting)
    pieces = amp.fast_pieces(sum(g.numel() for g in grads))
    assert pieces is not None
    with torch.set_grad_enabled(grad_mode):
        batched = amp.transform_many(grads, pieces)
        sizes = {g.numel() for g in grads}
        assert all(with_pieces and (n <= 16 * amp.chunk_size or n in sizes) for n, with_pieces in calls), calls
        assert sum(n for n, _ in calls) == sum(sizes) and len(calls) <= 5  # was 7: one per tensor
        calls.clear()
        single = [amp(g, pieces) for g in grads]
    for a, b in zip(batched, single):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    if grad_mode:
        weights = [torch.randn_like(g) for g in grads]
        got = torch.autograd.grad(
            sum((a * w).sum() for a, w in zip(batched, weights)), list(amp.parameters()), retain_graph=True
        )  # both paths share `pieces`' graph
        ref = torch.autograd.grad(sum((b * w).sum() for b, w in zip(single, weights)), list(amp.parameters()))
        # float32 sums in another order: compare as one vector (the output bias's gradient is 0 up to rounding,
        # since a constant shift of every score leaves the softmax unchanged)
        got, ref = torch.cat([a.flatten() for a in got]), torch.cat([b.flatten() for b in ref])
        assert float((got - ref).norm()) <= 1e-5 * float(ref.norm())
