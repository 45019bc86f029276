"""Core math: amplifier, outer step, gradient-filter wrappers, AGE/AWE, arithmetic data, decoder."""

import math

import pytest
import torch

from hf_ext.neuralgrok import (
    GradFilterOptimizer,
    GradientTransformOptimizer,
    GradNormOptimizer,
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    NeuralGrokOptimizer,
    absolute_entropy,
    absolute_gradient_entropy,
    amplifier_outer_step,
    arithmetic_vocab_size,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
    stability_after_target,
    steps_to_accuracy,
    weight_norm,
)


def tiny_model(p=11, seed=0, hidden=32):
    torch.manual_seed(seed)
    return GrokDecoderForCausalLM(
        GrokDecoderConfig(vocab_size=arithmetic_vocab_size("a+b", p), hidden_size=hidden, num_attention_heads=4)
    )


def batch_of(ds, n=None):
    rows = ds[: n or len(ds)]
    return {"input_ids": rows["input_ids"], "labels": rows["labels"]}


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)


@pytest.fixture
def model_with_grads(splits):
    model = tiny_model()
    model(**batch_of(splits["inner"])).loss.backward()
    return model


# --------------------------------------------------------------------------- amplifier


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4)])
def test_softmax_sums_to_one_per_tensor(shape):
    torch.manual_seed(0)
    amp = NeuralAmplifier((16, 16))
    grad = torch.randn(shape)
    p = amp.probabilities(grad)
    assert p.shape == grad.shape
    assert torch.all(p > 0)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    # not uniform: the learned scores differ across entries
    assert p.max() > p.min() * 1.01


@pytest.mark.parametrize("c", [0.2, 1.0, 3.0])
def test_transformed_gradient_has_norm_c_per_tensor(model_with_grads, c):
    torch.manual_seed(0)
    amp = NeuralAmplifier((16, 16), c=c)
    n = amp.transform_(model_with_grads.parameters())
    assert n == len(list(model_with_grads.parameters()))
    for name, param in model_with_grads.named_parameters():
        assert param.grad.grad_fn is None and not param.grad.requires_grad, name
        torch.testing.assert_close(param.grad.norm(), torch.tensor(c), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [(64,), (16, 8), (4, 4, 4)])
def test_transform_is_not_plain_normalisation_and_catches_softmax_dim_bug(shape):
    torch.manual_seed(0)
    amp = NeuralAmplifier((16, 16), c=1.0)
    buggy = NeuralAmplifier((16, 16), c=1.0, softmax_dim=-1)
    buggy.load_state_dict(amp.state_dict())
    g = torch.randn(shape)
    direction = g / g.norm()
    good = amp(g)
    # a non-trivial per-coordinate reweighting: the direction changes
    assert (good / good.norm() - direction).norm() > 1e-2
    # the dim=-1 variant has p == 1 everywhere, i.e. plain per-tensor normalisation: the test above would fail
    torch.testing.assert_close(buggy(g), direction, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(buggy.probabilities(g), torch.ones(shape))


def test_chunked_transform_matches_one_shot():
    torch.manual_seed(0)
    amp = NeuralAmplifier((8, 8), c=0.5)
    chunked = NeuralAmplifier((8, 8), c=0.5, chunk_size=7)
    chunked.load_state_dict(amp.state_dict())
    g = torch.randn(10, 9)
    with torch.no_grad():
        torch.testing.assert_close(chunked(g), amp(g))


def test_zero_gradient_stays_zero():
    amp = NeuralAmplifier((8,))
    out = amp(torch.zeros(4, 3))
    assert torch.equal(out, torch.zeros(4, 3))


@pytest.mark.parametrize("scale", [1e-19, 1e-25])
def test_tiny_gradients_are_rescaled_to_norm_c_like_a_float64_reference(scale):
    """Audit gh10 finding 1: ||p * g|| (and GradNormOptimizer's ||g||) was taken in float32, the squares of tiny
    entries underflowed and the eps floor 1e-30 divided: the "norm c" tensor came out 1e6-1e8 times too large."""
    import copy

    torch.manual_seed(0)
    amp = NeuralAmplifier((32, 32), c=1.0).eval()
    amp64 = copy.deepcopy(amp).double()

    def reference(g):  # c * p*g / ||p*g||, all in float64
        w = torch.softmax(amp64.net(g.double().reshape(-1, 1)).view(-1), 0) * g.double().view(-1)
        return (w / w.norm()).view_as(g)

    grads = [torch.randn(n) * scale for n in (50, 5000, 3000, 100000)]  # direct MLP and piecewise-linear form
    with torch.no_grad():
        for g in grads:  # forward: one tensor alone
            torch.testing.assert_close(amp(g).double(), reference(g), rtol=1e-5, atol=1e-6)
        for g, out in zip(grads[1:], amp.transform_many(grads[1:])):  # the batched group path of transform_
            torch.testing.assert_close(out.double(), reference(g), rtol=1e-5, atol=1e-6)
        assert torch.equal(amp.transform_many([torch.zeros(100), torch.zeros(200)])[1], torch.zeros(200))
    for g in grads:  # the normalisation control: norm c in the direction of g
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        GradNormOptimizer(torch.optim.SGD([p], lr=1.0), c=1.0, clip_norm=None, track_entropy=False).step()
        torch.testing.assert_close(-p.detach().double(), g.double() / g.double().norm(), rtol=1e-5, atol=1e-6)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.zeros(3)
    GradNormOptimizer(torch.optim.SGD([p], lr=1.0), clip_norm=None, track_entropy=False).step()
    assert torch.equal(p.detach(), torch.zeros(3))


def test_a_tiny_gradient_tensor_does_not_take_the_whole_global_clip():
    """Audit gh10 finding 1, NeuralGrokOptimizer: one tensor with |g| ~ 1e-25 came out of the transform with norm
    ~1e7 instead of c = 1, so the global clip shrank every other tensor's update to ~1e-7 (expected: 1/sqrt(2) each)."""
    torch.manual_seed(0)
    amp = NeuralAmplifier((32, 32), c=1.0).eval()
    big, tiny = torch.nn.Parameter(torch.zeros(4000)), torch.nn.Parameter(torch.zeros(4000))
    big.grad, tiny.grad = torch.randn(4000) * 1e-2, torch.randn(4000) * 1e-25
    NeuralGrokOptimizer(torch.optim.SGD([big, tiny], lr=1.0), amp, clip_norm=1.0, track_entropy=False).step()
    assert big.detach().norm().item() == pytest.approx(0.5**0.5, rel=1e-5)
    assert tiny.detach().norm().item() == pytest.approx(0.5**0.5, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(hidden_dims=()),
        dict(hidden_dims=(0, 3)),
        dict(c=0.0),
        dict(softmax_dim=1),
        dict(dropout=1.0),
        dict(chunk_size=0),
    ],
)
def test_amplifier_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        NeuralAmplifier(**kwargs)


# -------------------------------------------------------------------------- outer step


def test_outer_step_trains_amplifier_only(splits):
    model = tiny_model()
    inner, outer = batch_of(splits["inner"]), batch_of(splits["outer"])
    model(**inner).loss.backward()
    grads_before = {n: p.grad.clone() for n, p in model.named_parameters()}
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(1)
    amp = NeuralAmplifier((16, 16))
    amp_before = {n: p.detach().clone() for n, p in amp.named_parameters()}
    meta = torch.optim.Adam(amp.parameters(), lr=1e-2)
    loss = amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=1e-3)
    assert math.isfinite(loss)
    for name, phi in amp.named_parameters():
        assert phi.grad is not None, name
        assert phi.grad.abs().sum() > 0, name
        assert not torch.equal(phi.detach(), amp_before[name]), name
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), params_before[name]), name
        assert torch.equal(param.grad, grads_before[name]), name


def test_outer_gradient_matches_finite_differences(splits):
    """The hypergradient is the exact derivative of L_outer(theta - lr * G_phi(g_hat)) in phi."""
    from torch.func import functional_call

    model = tiny_model(hidden=16).double()
    inner, outer = batch_of(splits["inner"], 40), batch_of(splits["outer"])
    torch.manual_seed(3)
    amp = NeuralAmplifier((4,), c=1.0).double()
    lr = 0.5
    meta = torch.optim.SGD(amp.parameters(), lr=0.0)
    amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=lr)
    analytic = amp.net[0].weight.grad[0, 0].item()

    names, params = zip(*model.named_parameters())
    g_hat = torch.autograd.grad(model(**inner).loss, params)

    def outer_loss():
        with torch.no_grad():
            virtual = {n: p - lr * amp(g) for n, p, g in zip(names, params, g_hat)}
            return functional_call(model, virtual, kwargs=outer).loss.item()

    eps = 1e-6
    w = amp.net[0].weight
    with torch.no_grad():
        w[0, 0] += eps
    up = outer_loss()
    with torch.no_grad():
        w[0, 0] -= 2 * eps
    down = outer_loss()
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)


class _BatchNormNet(torch.nn.Module):
    """A model with buffers that a train-mode forward updates (BatchNorm running statistics and counter)."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)

    def forward(self, x, labels):
        from types import SimpleNamespace

        logits = self.out(torch.relu(self.bn(self.fc(x))))
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits, labels), logits=logits)


@pytest.mark.parametrize("custom_loss_fn", [False, True])
def test_outer_step_leaves_the_model_buffers_untouched(custom_loss_fn):
    """The reference runs the outer step on a deep copy of the model: the real model's BatchNorm running statistics
    and counter stay bit-identical (they used to move by up to 0.14, num_batches_tracked 1 -> 4), and the amplifier
    update is the one computed on a deep copy."""
    import copy

    torch.manual_seed(0)
    model = _BatchNormNet().train()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    model(x, y).loss.backward()
    inner = [{"x": x, "labels": y}]
    outer = [{"x": x[:8], "labels": y[:8]}, {"x": x[8:], "labels": y[8:]}]
    loss_fn = (lambda m, batch: m(**batch).loss) if custom_loss_fn else None
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}
    copy_of_model = copy.deepcopy(model)
    results = []
    for target in (model, copy_of_model):
        torch.manual_seed(1)
        amp = NeuralAmplifier((8, 8))
        meta = torch.optim.Adam(amp.parameters(), lr=1e-2)
        loss = amplifier_outer_step(amp, meta, target, inner, outer, virtual_lr=1e-2, loss_fn=loss_fn)
        results.append((loss, [p.detach().clone() for p in amp.parameters()]))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers_before[name]), name
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)
    # ... and that update is what the reference's deep copy gives: every forward updates the copy's running stats
    torch.manual_seed(1)
    amp = NeuralAmplifier((8, 8))
    reference = copy.deepcopy(model)
    names, params = zip(*reference.named_parameters())
    g_hat = torch.autograd.grad(reference(**inner[0]).loss, params)  # step 1 on the copy (updates its buffers)
    virtual = {n: p.detach() - 1e-2 * amp(g) for n, p, g in zip(names, params, g_hat)}
    from torch.func import functional_call

    expected = sum(len(b["x"]) * functional_call(reference, virtual, kwargs=b).loss for b in outer) / 16
    assert results[0][0] == pytest.approx(float(expected.detach()), rel=1e-6)


def test_outer_steps_lower_the_outer_loss(splits):
    model = tiny_model()
    inner, outer = batch_of(splits["inner"]), batch_of(splits["outer"])
    torch.manual_seed(0)
    amp = NeuralAmplifier((16, 16), c=1.0)
    meta = torch.optim.Adam(amp.parameters(), lr=3e-2)
    losses = [amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=1.0) for _ in range(15)]
    assert losses[-1] < losses[0]


def test_outer_step_with_a_given_gradient_equals_recomputing_it(splits):
    """`g_hat=` (the trainer's outer_gradient="next_step") transforms exactly the gradient it is given."""
    model = tiny_model()
    inner, outer = batch_of(splits["inner"]), batch_of(splits["outer"])
    results = []
    for given in (False, True):
        torch.manual_seed(1)
        amp = NeuralAmplifier((16, 16))
        meta = torch.optim.Adam(amp.parameters(), lr=1e-2)
        if given:
            params = [p for p in model.parameters() if p.requires_grad]
            g_hat = torch.autograd.grad(model(**inner).loss, params)
            loss = amplifier_outer_step(amp, meta, model, [], [outer], virtual_lr=1e-3, g_hat=g_hat)
        else:
            loss = amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=1e-3)
        results.append((loss, [p.detach().clone() for p in amp.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
    amp = NeuralAmplifier((4,))
    with pytest.raises(ValueError, match="g_hat"):
        amplifier_outer_step(amp, torch.optim.Adam(amp.parameters()), model, [], [outer], 1e-3, g_hat=[None])


def _outer_step_result(model, inner, outer, g_hat=None, loss_fn=None):
    torch.manual_seed(1)
    amp = NeuralAmplifier((16, 16))
    meta = torch.optim.Adam(amp.parameters(), lr=1e-2)
    loss = amplifier_outer_step(amp, meta, model, inner, [outer], virtual_lr=1e-3, g_hat=g_hat, loss_fn=loss_fn)
    return loss, [p.detach().clone() for p in amp.parameters()]


def test_an_inner_micro_batch_without_a_labelled_token_gets_weight_zero(splits):
    """Its mean loss is NaN (0 / 0): it is left out of g_hat, not multiplied by its weight 0 (0 * NaN = NaN, and the
    gradient of a masked mean over no token is NaN too)."""
    model = tiny_model()
    inner, outer = batch_of(splits["inner"], 8), batch_of(splits["outer"])
    masked = {"input_ids": inner["input_ids"][:2], "labels": torch.full_like(inner["labels"][:2], -100)}

    def mean_over_own_tokens(m, batch):  # the usual masked mean: sum(nll * mask) / sum(mask), 0 / 0 here
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        logp = m(input_ids=batch["input_ids"]).logits[:, :-1].log_softmax(-1)
        nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (nll * mask).sum() / mask.sum()

    loss, amp = _outer_step_result(model, [inner, masked], outer, loss_fn=mean_over_own_tokens)
    ref_loss, ref_amp = _outer_step_result(model, [inner], outer, loss_fn=mean_over_own_tokens)
    assert math.isfinite(loss) and loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b in zip(amp, ref_amp):
        torch.testing.assert_close(a, b)


def test_ragged_inner_micro_batches_give_the_gradient_of_one_batch_of_their_next_token_targets(splits):
    """Right-padded causal-LM micro-batches with labels = input_ids: each weighs by its labelled next-token targets
    (`labels[..., 1:]`, what `num_items_in_batch` counts), not by all its labelled positions. A (3 tokens) and B (two
    rows of 2) both hold 2 targets: g_hat is the one-batch gradient with num_items_in_batch=4, A:B = 2:2, not 3:4."""
    model = tiny_model()
    ids = splits["inner"][:3]["input_ids"].tolist()
    a_ids = torch.tensor([ids[0][:3] + [0]])
    b_ids = torch.tensor([ids[1][:2] + [0, 0], ids[2][:2] + [0, 0]])
    a = {"input_ids": a_ids, "labels": torch.tensor([ids[0][:3] + [-100]])}
    b = {"input_ids": b_ids, "labels": torch.tensor([ids[1][:2] + [-100, -100], ids[2][:2] + [-100, -100]])}
    params = [p for p in model.parameters() if p.requires_grad]
    one_batch = sum(model(**m, num_items_in_batch=4).loss for m in (a, b))
    g_ref = torch.autograd.grad(one_batch, params)
    outer = batch_of(splits["outer"])
    loss, amp = _outer_step_result(model, [a, b], outer)
    ref_loss, ref_amp = _outer_step_result(model, [], outer, g_hat=g_ref)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for x, y in zip(amp, ref_amp):
        torch.testing.assert_close(x, y)


def test_outer_step_rejects_empty_inputs(splits):
    model, amp = tiny_model(), NeuralAmplifier((4,))
    meta = torch.optim.Adam(amp.parameters())
    with pytest.raises(ValueError, match="outer_batches"):
        amplifier_outer_step(amp, meta, model, [batch_of(splits["inner"])], [], virtual_lr=1e-3)
    with pytest.raises(ValueError, match="inner_batches"):
        amplifier_outer_step(amp, meta, model, [], [batch_of(splits["outer"])], virtual_lr=1e-3)


# ------------------------------------------------------------------ optimizer wrappers


def test_neuralgrok_optimizer_transforms_then_clips():
    """With SGD(lr=1) the update is the final gradient: c per tensor, then a global clip to 1."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))  # 4 tensors
    layer(torch.randn(8, 6)).pow(2).sum().backward()
    before = [p.detach().clone() for p in layer.parameters()]
    amp = NeuralAmplifier((8,), c=1.0)
    opt = NeuralGrokOptimizer(torch.optim.SGD(layer.parameters(), lr=1.0), amp, clip_norm=1.0)
    opt.step()
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, layer.parameters())])
    assert delta.norm().item() == pytest.approx(1.0, rel=1e-5)  # sqrt(4) * c clipped to 1
    assert opt.last_metrics["grad_norm_transformed"] == pytest.approx(2.0, rel=1e-5)
    assert {"age_raw", "age_transformed", "grad_norm_raw"} <= set(opt.last_metrics)


def test_neuralgrok_optimizer_transforms_with_the_amplifier_in_eval_mode_and_restores_its_mode():
    """The real update uses the method's transform, dropout off, even for an amplifier in train mode (a fresh
    `NeuralAmplifier(dropout=...)` is one): with dropout applied there it was random, 0.35 off the eval-mode transform
    here and different between two identical steps. The amplifier's train/eval flag is left as it was."""
    torch.manual_seed(0)
    amp = NeuralAmplifier((32, 32), dropout=0.5)
    g = torch.randn(200)
    with torch.no_grad():
        expected = amp.eval()(g.clone())
    for training in (True, False):
        amp.train(training)
        for _ in range(2):
            p = torch.nn.Parameter(torch.zeros(200))
            opt = NeuralGrokOptimizer(torch.optim.SGD([p], lr=1.0), amp, clip_norm=None, track_entropy=False)
            p.grad = g.clone()
            opt.step()
            torch.testing.assert_close(-p.detach(), expected, rtol=1e-6, atol=1e-7)
            assert amp.training is training


def _two_layer_with_grads(seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    layer(torch.randn(8, 6)).pow(2).sum().backward()
    return layer


@pytest.mark.parametrize("c, clip", [(1.0, 1.0), (0.3, None), (2.0, 1.5)])
def test_normalize_control_is_neuralgrok_with_a_uniform_amplifier(c, clip):
    """The control equals NeuralGrok's step with the amplifier's output fixed (constant scores -> uniform softmax)."""
    ref, ctl = _two_layer_with_grads(), _two_layer_with_grads()
    amp = NeuralAmplifier((8,), c=c)
    with torch.no_grad():
        amp.net[-1].weight.zero_()  # constant score for every entry: p = 1/n, uniform over each tensor
    NeuralGrokOptimizer(torch.optim.SGD(ref.parameters(), lr=1.0), amp, clip_norm=clip).step()
    opt = GradNormOptimizer(torch.optim.SGD(ctl.parameters(), lr=1.0), c=c, clip_norm=clip)
    raw = [p.grad.clone() for p in ctl.parameters()]
    opt.step()
    for a, b in zip(ref.parameters(), ctl.parameters()):
        torch.testing.assert_close(a, b)
    # same per-tensor direction as the raw gradient, norm c per tensor before the clip
    for g, p in zip(raw, ctl.parameters()):
        torch.testing.assert_close(p.grad, g * (p.grad.norm() / g.norm()))
    assert opt.last_metrics["grad_norm_transformed"] == pytest.approx(2.0 * c, rel=1e-5)  # 4 tensors


def test_normalize_control_rejects_bad_arguments():
    inner = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="c="):
        GradNormOptimizer(inner, c=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        GradNormOptimizer(inner, clip_norm=-1.0)


def test_grokfast_ema_filter_math():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = GradFilterOptimizer(torch.optim.SGD([p], lr=1.0), mode="ema", alpha=0.9, lamb=2.0)
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 3.0])
    p.grad = g1.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -(1 + 2.0) * g1)  # mu starts at the first gradient
    p.grad = g2.clone()
    opt.step()
    mu = 0.9 * g1 + 0.1 * g2
    torch.testing.assert_close(p.detach(), -3.0 * g1 - (g2 + 2.0 * mu))


def test_grokfast_ma_filter_math_and_warmup():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = GradFilterOptimizer(torch.optim.SGD([p], lr=1.0), mode="ma", lamb=5.0, window=2, warmup=True)
    grads = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([4.0, 4.0])]
    p.grad = grads[0].clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -grads[0])  # window not full: unfiltered
    p.grad = grads[1].clone()
    opt.step()
    step2 = grads[1] + 5.0 * (grads[0] + grads[1]) / 2
    torch.testing.assert_close(p.detach(), -grads[0] - step2)
    p.grad = grads[2].clone()
    opt.step()
    step3 = grads[2] + 5.0 * (grads[1] + grads[2]) / 2
    torch.testing.assert_close(p.detach(), -grads[0] - step2 - step3)


@pytest.mark.parametrize("mode", ["ema", "ma"])
def test_grad_filter_state_dict_round_trip(mode):
    def make():
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 3)
        opt = GradFilterOptimizer(torch.optim.AdamW(lin.parameters(), lr=1e-2), mode=mode, window=3)
        return lin, opt

    data = [torch.randn(5, 4) for _ in range(6)]
    lin_a, opt_a = make()
    for x in data:
        lin_a(x).pow(2).sum().backward()
        opt_a.step()
        opt_a.zero_grad()
    lin_b, opt_b = make()
    for x in data[:3]:
        lin_b(x).pow(2).sum().backward()
        opt_b.step()
        opt_b.zero_grad()
    saved = opt_b.state_dict()
    assert "gradient_transform" in saved
    lin_c, opt_c = make()
    lin_c.load_state_dict(lin_b.state_dict())
    opt_c.load_state_dict(saved)
    for x in data[3:]:
        lin_c(x).pow(2).sum().backward()
        opt_c.step()
        opt_c.zero_grad()
    for pa, pc in zip(lin_a.parameters(), lin_c.parameters()):
        torch.testing.assert_close(pa, pc)
    assert opt_c.num_transforms == 6


@pytest.mark.parametrize("mode", ["ema", "ma"])
def test_grad_filter_state_of_another_model_is_refused_naming_the_shape(mode):
    """The Grokfast buffers are whole tensors in a checkpoint, re-shaped (re-sharded under FSDP2) like their
    parameter on load: a buffer of another shape, or for a parameter the optimizer lacks, is refused by name (it was
    loaded and failed at the next step's in-place update, or as a bare IndexError)."""
    lin = torch.nn.Linear(4, 3)
    opt = GradFilterOptimizer(torch.optim.SGD(lin.parameters(), lr=1.0), mode=mode, window=2)
    lin(torch.ones(1, 4)).sum().backward()
    opt.step()
    state = opt.extra_state_dict()
    assert all(type(t) is torch.Tensor for t in state["ema" if mode == "ema" else "queues"].values())
    other = torch.nn.Linear(4, 5)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(.*3, 4\), but the parameter has shape \(5, 4\)"):
        GradFilterOptimizer(torch.optim.SGD(other.parameters(), lr=1.0), mode=mode, window=2).load_extra_state_dict(
            state
        )
    one = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="buffer for parameter 1, but the optimizer has 1 parameters"):
        GradFilterOptimizer(torch.optim.SGD([one], lr=1.0), mode=mode, window=2).load_extra_state_dict(state)


def test_state_files_are_written_atomically(tmp_path, monkeypatch):
    """`save_state` (the Grokfast buffers, the meta-optimizer) writes each file under a temporary name and renames it:
    a save that fails half-way leaves no truncated JSON that a resume would take for a written state."""
    import json

    from hf_ext.neuralgrok.state import save_state, state_exists

    def broken_dump(obj, fh, **kwargs):
        fh.write('{"__dict__": [')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_state({"a": torch.zeros(2), "n": 4}, str(tmp_path / "state"))
    assert not state_exists(str(tmp_path / "state"))
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]  # no state.json, no temporary file


def test_wrapper_rejects_bad_inner_and_modes():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="inner"):
        GradFilterOptimizer(object())
    with pytest.raises(ValueError, match="mode"):
        GradFilterOptimizer(torch.optim.SGD(lin.parameters(), lr=1.0), mode="fir")
    with pytest.raises(TypeError, match="amplifier"):
        NeuralGrokOptimizer(torch.optim.SGD(lin.parameters(), lr=1.0), amplifier=torch.nn.Linear(1, 1))


def test_wrapper_works_with_lr_scheduler():
    lin = torch.nn.Linear(2, 2)
    opt = GradFilterOptimizer(torch.optim.SGD(lin.parameters(), lr=1.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.inner.param_groups[0]["lr"] == 0.5
    lin(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    assert opt.last_lr == 0.5


# ------------------------------------------------------------------------------ metrics


def test_age_is_finite_with_exact_zeros_and_matches_formula():
    g = torch.tensor([0.0, 0.5, -0.25, 0.0, 2.0])
    h = absolute_entropy([g, torch.zeros(3)])
    nz = g[g != 0].abs().double()
    expected = -(nz * nz.log()).sum()
    assert torch.isfinite(h)
    torch.testing.assert_close(h, expected)
    # the reference formula gives NaN on exact zeros; ours does not
    assert torch.isnan(-(g.abs() * g.abs().log()).sum())
    # not scale invariant: H(cx) = c H(x) - c ln(c) ||x||_1
    c = 3.0
    torch.testing.assert_close(absolute_entropy(c * g), c * h - c * math.log(c) * g.abs().sum().double())


def test_absolute_gradient_entropy_on_model(model_with_grads):
    value = absolute_gradient_entropy(model_with_grads)
    assert math.isfinite(value)
    with pytest.raises(ValueError, match="backward"):
        absolute_gradient_entropy(tiny_model())


def test_steps_to_accuracy():
    assert steps_to_accuracy([10, 20, 30], [0.1, 0.96, 0.99]) == 20
    assert steps_to_accuracy([10, 20], [0.1, 0.5]) is None


# --------------------------------------------------------------------------------- data


def test_weight_norm_is_global_l2():
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(2.0)
    assert weight_norm(layer) == pytest.approx(math.sqrt(6 * 1 + 2 * 4))


def test_stability_after_target_counts_drops_and_spikes():
    steps = [10, 20, 30, 40, 50, 60, 70]
    acc = [0.1, 0.96, 0.97, 0.40, 0.98, 0.80, 0.99]  # reaches at 20; two falls below 0.85
    loss = [2.0, 0.01, 0.001, 0.5, 0.002, 0.3, 0.001]
    out = stability_after_target(steps, acc, steps, loss, target=0.95)
    assert out["reached"] and out["accuracy_drops"] == 2 and out["loss_spikes"] == 2
    assert out["min_test_accuracy_after_target"] == pytest.approx(0.40)
    assert out["fraction_evals_below"] == pytest.approx(2 / 6)
    assert out["max_train_loss_after_target"] == pytest.approx(0.5)
    # a long fall counts once; a tiny absolute rise (below the floor) is not a spike
    out = stability_after_target(steps, [0.96, 0.5, 0.5, 0.5, 0.97, 0.97, 0.97], steps, [1e-4, 5e-3] + [1e-4] * 5)
    assert out["accuracy_drops"] == 1 and out["loss_spikes"] == 0
    never = stability_after_target(steps, [0.1] * 7, steps, loss)
    assert never["reached"] is False and never["accuracy_drops"] is None
    with pytest.raises(ValueError, match="same length"):
        stability_after_target([1, 2], [0.5], [], [])


def test_arithmetic_dataset_layout_and_sizes():
    """The interleaved layout (the default, with which the documented numbers were measured); the official code's
    layout="reference" is checked against the official construction in test_ng20_fixes.py."""
    ds = build_arithmetic_dataset("a+b", 97, layout="interleaved")
    assert len(ds) == 97 * 96
    row = ds[0]
    ids, labels = row["input_ids"].tolist(), row["labels"].tolist()
    a, op, b, eq, r = ids
    assert (op, eq) == (98, 97) and 0 <= a < 97 and 1 <= b < 97 and r == (a + b) % 97
    assert labels == [-100, -100, -100, -100, r]
    assert arithmetic_vocab_size("a+b", 97) == 99
    sub = build_arithmetic_dataset("a-b", 7, layout="interleaved")[:]["input_ids"]
    assert torch.equal(sub[:, 4], (sub[:, 0] - sub[:, 2]) % 7)
    mul = build_arithmetic_dataset("axb", 7, layout="interleaved")[:]["input_ids"]  # reference alias
    assert torch.equal(mul[:, 4], (mul[:, 0] * mul[:, 2]) % 7)
    sq = build_arithmetic_dataset("a*a-b", 7, layout="interleaved")[:]["input_ids"]
    assert sq.shape[1] == 7 and torch.equal(sq[:, 6], (sq[:, 0] ** 2 - sq[:, 4]) % 7)
    assert torch.equal(sq[:, 2], sq[:, 0]) and set(sq[:, 1].tolist()) == {8}  # [a, op1, a, op2, b, =, r]
    assert set(sq[:, 3].tolist()) == {9} and arithmetic_vocab_size("a*a-b", 7) == 10
    five = build_arithmetic_dataset("a*c+b*d-e", 7, layout="interleaved")
    assert len(five) == 12348 and arithmetic_vocab_size("a*c+b*d-e", 7) == 11
    x = five[:]["input_ids"]
    assert x.shape[1] == 11 and [set(x[:, i].tolist()) for i in (1, 3, 5, 7, 9)] == [{8}, {9}, {8}, {10}, {7}]
    a, b, c, d, e = x[:, 0], x[:, 2], x[:, 4], x[:, 6], x[:, 8]
    assert torch.equal(x[:, 10], (a * c + b * d - e) % 7)
    assert c.min() == 1 and d.min() == 1 and a.min() == 0


def test_split_sizes_and_disjointness():
    ds = build_arithmetic_dataset("a+b", 97)
    sp = split_arithmetic_dataset(ds, train_fraction=0.5, outer_fraction=0.02, seed=0)
    assert (len(sp["train"]), len(sp["inner"]), len(sp["outer"]), len(sp["test"])) == (4656, 4563, 93, 4656)
    key = lambda d: {tuple(r) for r in d[:]["input_ids"].tolist()}  # noqa: E731
    inner, outer, test = key(sp["inner"]), key(sp["outer"]), key(sp["test"])
    assert not (inner & outer) and not (inner & test) and not (outer & test)
    assert key(sp["train"]) == inner | outer
    again = split_arithmetic_dataset(ds, 0.5, 0.02, seed=0)
    other = split_arithmetic_dataset(ds, 0.5, 0.02, seed=1)
    assert key(again["test"]) == test and key(other["test"]) != test


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: build_arithmetic_dataset("a/b", 7), "task"),
        (lambda: build_arithmetic_dataset("a+b", 12), "prime"),
        (lambda: split_arithmetic_dataset(build_arithmetic_dataset("a+b", 7), 1.5), "train_fraction"),
        (lambda: split_arithmetic_dataset(build_arithmetic_dataset("a+b", 7), 0.5, -0.1), "outer_fraction"),
        # 24 training rows: 0.01 of them rounds to an empty outer set
        (lambda: split_arithmetic_dataset(build_arithmetic_dataset("a+b", 7), 0.5, 0.01), "empty outer set"),
    ],
)
def test_data_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------ decoder


def test_decoder_is_causal_and_trains_on_answer_only(splits, tmp_path):
    model = tiny_model().eval()
    batch = batch_of(splits["test"], 8)
    out = model(**batch)
    assert out.logits.shape == (8, 5, 13)
    changed = batch["input_ids"].clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11  # the answer token itself must not influence its prediction
    torch.testing.assert_close(model(input_ids=changed).logits[:, :-1], out.logits[:, :-1])
    expected = torch.nn.functional.cross_entropy(out.logits[:, -2], batch["input_ids"][:, -1])
    torch.testing.assert_close(out.loss, expected)
    # sum-reduction for gradient accumulation
    torch.testing.assert_close(model(**batch, num_items_in_batch=16).loss, expected * 8 / 16)
    model.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, GrokDecoderForCausalLM)
    torch.testing.assert_close(reloaded(**batch).logits, out.logits)
    with pytest.raises(ValueError, match="divisible"):
        GrokDecoderConfig(hidden_size=30, num_attention_heads=4).validate_architecture()


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_resizes_both_embeddings_and_honours_tie_word_embeddings(tie, tmp_path):
    """`resize_token_embeddings` resizes the embeddings, the head and `config.vocab_size` (it used to crash on the
    head after resizing the embeddings), and `tie_word_embeddings=True` shares one matrix (it used to be ignored)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32, tie_word_embeddings=tie)).eval()
    untied_params = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32)).num_parameters()
    shared = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert shared is tie
    assert model.num_parameters() == untied_params - (13 * 32 if tie else 0)
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()

    model.resize_token_embeddings(15, pad_to_multiple_of=8)
    assert model.config.vocab_size == 16
    assert model.get_input_embeddings().weight.shape == (16, 32)
    assert model.get_output_embeddings().weight.shape == (16, 32)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tie
    torch.testing.assert_close(model.get_input_embeddings().weight[:13], old_embeddings, rtol=0, atol=0)
    torch.testing.assert_close(model.get_output_embeddings().weight[:13], old_head, rtol=0, atol=0)
    input_ids = torch.tensor([[1, 15, 3, 14]])
    logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, 4, 16)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.vocab_size == 16 and reloaded.config.tie_word_embeddings is tie
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) is tie
    torch.testing.assert_close(reloaded(input_ids=input_ids).logits, logits, rtol=0, atol=0)


def test_gradient_statistics_are_computed_when_read_and_describe_the_last_step(monkeypatch):
    """AGE and norms are computed once per read of `last_metrics` (a log), from copies of the last step's gradients:
    not once per step, and never from a stale or later state (the next backward or the clip must not leak in)."""
    from hf_ext.neuralgrok import optim as optim_module

    calls = []
    real = optim_module.absolute_entropy
    monkeypatch.setattr(optim_module, "absolute_entropy", lambda t: calls.append(1) or real(t))
    layer = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    opt = NeuralGrokOptimizer(torch.optim.SGD(layer.parameters(), lr=0.1), NeuralAmplifier((8,)), clip_norm=0.5)
    torch.manual_seed(0)
    for _ in range(10):
        opt.zero_grad()
        layer(torch.randn(8, 6)).pow(2).sum().backward()
        raw = [p.grad.clone() for p in layer.parameters()]
        opt.step()
    assert calls == []  # nothing computed during the 10 steps
    with torch.no_grad():
        transformed = opt.amplifier.transform_many(raw)
    metrics = dict(opt.last_metrics)
    assert len(calls) == 2  # raw and transformed, once
    assert metrics["age_raw"] == pytest.approx(float(real(raw)), rel=1e-9)
    assert metrics["grad_norm_raw"] == pytest.approx(float(torch.cat([g.flatten() for g in raw]).norm()), rel=1e-6)
    assert metrics["age_transformed"] == pytest.approx(float(real(transformed)), rel=1e-5)
    assert metrics["grad_norm_transformed"] == pytest.approx(2.0, rel=1e-5)  # before the clip to 0.5
    # a new backward does not change what was recorded for the last step; reading again computes nothing
    layer(torch.randn(8, 6)).pow(2).sum().backward()
    assert opt.last_metrics == metrics and len(calls) == 2
    GradientTransformOptimizer(torch.optim.SGD(layer.parameters(), lr=0.1), track_entropy=False).step()
    assert len(calls) == 2


def test_lora_on_the_attention_module_trains_and_on_out_proj_alone_does_not():
    """docs/neuralgrok.md: `nn.MultiheadAttention` uses its `out_proj` weight without calling the module, so a LoRA on
    `out_proj` (what peft's "all-linear" picks) gets no gradient, and one on the whole `attn` module does."""
    from peft import LoraConfig, get_peft_model

    def lora_grads(target_modules):
        torch.manual_seed(0)
        model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=50, hidden_size=32, max_position_embeddings=16))
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target_modules, init_lora_weights=False))
        ids = torch.randint(0, 50, (2, 8))
        peft_model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in peft_model.named_parameters()
                if "lora_" in n}  # fmt: skip

    linear = lora_grads("all-linear")
    assert any(".mlp." in n for n in linear) and all(v for n, v in linear.items() if ".mlp." in n)
    assert any("out_proj" in n for n in linear) and not any(v for n, v in linear.items() if "out_proj" in n)
    attn = lora_grads(["attn"])
    assert attn and all(attn.values())
