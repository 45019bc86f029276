"""Checks added by mutation testing: each compares against an independent float64 re-implementation or brute force.

- the trainer's first two steps and its outer step against a hand-written NeuralGrok loop (transform, clip, coupled
  Adam; outer step on the T-th step's batch at the parameters after the real update; meta-Adam with its own betas and
  weight decay);
- the outer step's reductions: mean over inner micro-batches, token-weighted mean over outer batches, fresh
  amplifier gradients at every call;
- the answer-accuracy metrics against a per-row loop;
- the wrappers' state_dict round trip keeps the learning-rate scheduler attached to the inner optimizer.
"""

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call
from transformers import EvalPrediction

from hf_ext.neuralgrok import (
    GradFilterOptimizer,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokOptimizer,
    NeuralGrokTrainer,
    amplifier_outer_step,
    arithmetic_accuracy,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from hf_ext.neuralgrok.metrics import answer_accuracy_from_logits

from .test_trainer import P, make_model


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)


def rows(ds, sl=slice(None)):
    r = ds[sl]
    return {"input_ids": r["input_ids"], "labels": r["labels"]}


# ----------------------------------------------------------------------------- float64 reference of NeuralGrok


def ref_mlp(phi, x):
    """The amplifier MLP 1 -> h... -> 1 with ReLU, written out (phi: [W0, b0, W1, b1, ...])."""
    h = x
    pairs = list(zip(phi[0::2], phi[1::2]))
    for i, (w, b) in enumerate(pairs):
        h = h @ w.T + b
        if i < len(pairs) - 1:
            h = torch.relu(h)
    return h


def ref_transform(phi, g, c):
    """g' = c * p*g / ||p*g||, p = softmax over all entries of the tensor of MLP(g)."""
    s = ref_mlp(phi, g.reshape(-1, 1)).reshape(-1)
    p = torch.softmax(s, dim=0).view_as(g)
    w = p * g
    return c * w / w.norm()


def ref_adam(params, grads, state, lr, betas, wd, eps=1e-8):
    """torch.optim.Adam semantics (coupled L2), written out; returns the new params."""
    b1, b2 = betas
    state["t"] = state.get("t", 0) + 1
    t = state["t"]
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        g = g + wd * p
        m = state.setdefault(("m", i), torch.zeros_like(p))
        v = state.setdefault(("v", i), torch.zeros_like(p))
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        out.append(p - lr * mhat / (vhat.sqrt() + eps))
    return out


def test_trainer_steps_and_outer_step_match_a_float64_reference(splits, tmp_path):
    """Two real steps (transform -> clip -> coupled Adam) and, after the 2nd (T = 2), one outer step on the 2nd step's
    batch at the parameters after that step, then one meta-Adam step with the meta betas and meta weight decay."""
    lr, meta_lr, wd, meta_wd, c, clip = 1e-2, 1e-2, 1e-2, 1e-3, 0.7, 1.0
    args = NeuralGrokConfig(
        output_dir=str(tmp_path),
        gradient_transform="neuralgrok",
        max_steps=2,
        outer_every=2,
        per_device_train_batch_size=8,
        amplifier_hidden_dims=[8, 8],
        amplifier_c=c,
        amplifier_clip_norm=clip,
        learning_rate=lr,
        weight_decay=wd,
        meta_learning_rate=meta_lr,
        meta_weight_decay=meta_wd,
        adam_beta1=0.8,
        adam_beta2=0.95,
        # a large epsilon: Adam's first steps are ~lr * sign(g), and the exactly-zero gradients (e.g. the key bias)
        # are float noise whose sign float32 and float64 do not share
        adam_epsilon=1e-3,
        warmup_steps=0,
        lr_scheduler_type="constant",
        logging_steps=100,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        report_to="none",
    )
    model = make_model()
    trainer = NeuralGrokTrainer(model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"])
    ref_model = copy.deepcopy(model).double()
    phi = [p.detach().double().clone() for p in trainer.amplifier.parameters()]
    seen = []
    original_step = trainer.training_step

    def capturing(model_, inputs, *a, **k):
        seen.append({k_: v.clone() for k_, v in inputs.items() if k_ in ("input_ids", "labels")})
        return original_step(model_, inputs, *a, **k)

    trainer.training_step = capturing
    trainer.train()
    assert len(seen) == 2 and trainer.num_outer_steps == 1
    assert not torch.equal(seen[0]["input_ids"], seen[1]["input_ids"])

    # --- the inner loop
    names = [n for n, _ in ref_model.named_parameters()]
    theta = [p.detach().clone() for p in ref_model.parameters()]
    adam_state: dict = {}

    def loss_at(params, batch):
        return functional_call(ref_model, dict(zip(names, params)), kwargs=batch).loss

    for batch in seen:
        grads = torch.autograd.grad(loss_at([t.requires_grad_(True) for t in theta], batch), theta)
        theta = [t.detach() for t in theta]
        with torch.no_grad():
            new = [ref_transform(phi, g, c) for g in grads]
            total = torch.cat([g.reshape(-1) for g in new]).norm()
            new = [g * min(1.0, clip / (float(total) + 1e-6)) for g in new]
            theta = ref_adam(theta, new, adam_state, lr, (0.8, 0.95), wd, eps=1e-3)
    for name, got, want in zip(names, trainer.model.parameters(), theta):
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-6, msg=name)

    # --- the outer step: g_hat on the 2nd batch at theta_2; virtual SGD step; whole outer set; grad into phi only
    theta = [t.detach() for t in theta]
    theta_req = [t.clone().requires_grad_(True) for t in theta]
    g_hat = [g.detach() for g in torch.autograd.grad(loss_at(theta_req, seen[1]), theta_req)]
    phi_req = [p.clone().requires_grad_(True) for p in phi]
    virtual = [t - lr * ref_transform(phi_req, g, c) for t, g in zip(theta, g_hat)]
    outer_loss = loss_at(virtual, rows(splits["outer"]))  # all 11 outer rows at once (trainer: batches of 8 + 3)
    meta_grads = torch.autograd.grad(outer_loss, phi_req)
    assert trainer.last_outer_loss == pytest.approx(float(outer_loss.detach()), rel=1e-5)
    for got, want in zip(trainer.amplifier.parameters(), meta_grads):
        torch.testing.assert_close(got.grad.double(), want, rtol=1e-3, atol=1e-7)
    meta_state: dict = {}
    new_phi = ref_adam(phi, meta_grads, meta_state, meta_lr, (0.8, 0.95), meta_wd)
    for i, (got, want) in enumerate(zip(trainer.amplifier.parameters(), new_phi)):
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-6)
        st = trainer.meta_optimizer.state[got]
        torch.testing.assert_close(st["exp_avg"].double(), meta_state[("m", i)], rtol=1e-3, atol=1e-8)
        torch.testing.assert_close(st["exp_avg_sq"].double(), meta_state[("v", i)], rtol=2e-3, atol=1e-10)


# ---------------------------------------------------------------------------------------- outer-step reductions


def test_outer_step_inner_gradient_is_the_mean_over_micro_batches(splits):
    """Two equal micro-batches give the gradient of their concatenation (the accumulated batch), not the sum."""
    model = make_model()
    inner = rows(splits["inner"], slice(0, 16))
    halves = [{k: v[:8] for k, v in inner.items()}, {k: v[8:] for k, v in inner.items()}]
    outer = rows(splits["outer"])
    params = [p for p in model.parameters() if p.requires_grad]
    g_full = torch.autograd.grad(model(**inner).loss, params)
    grads = []
    for kwargs in (dict(inner_batches=halves), dict(inner_batches=[], g_hat=g_full)):
        torch.manual_seed(1)
        amp = NeuralAmplifier((8, 8))
        meta = torch.optim.SGD(amp.parameters(), lr=0.0)
        amplifier_outer_step(amp, meta, model, outer_batches=[outer], virtual_lr=0.5, **kwargs)
        grads.append([p.grad.clone() for p in amp.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_outer_loss_is_the_example_weighted_mean_over_outer_batches(splits):
    """Outer batches of 7 and 4 rows give the loss and the phi-gradient of the 11 rows as one batch."""
    model = make_model()
    inner, outer = rows(splits["inner"], slice(0, 8)), rows(splits["outer"])
    assert outer["input_ids"].shape[0] == 11
    parts = [{k: v[:7] for k, v in outer.items()}, {k: v[7:] for k, v in outer.items()}]
    results = []
    for outer_batches in ([outer], parts):
        torch.manual_seed(1)
        amp = NeuralAmplifier((8, 8))
        meta = torch.optim.SGD(amp.parameters(), lr=0.0)
        loss = amplifier_outer_step(amp, meta, model, [inner], outer_batches, virtual_lr=0.5)
        results.append((loss, [p.grad.clone() for p in amp.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_every_outer_step_starts_from_fresh_amplifier_gradients(splits):
    """With a meta lr of 0 nothing changes between two calls, so the second call's phi-gradient equals the first's
    (it would double if the amplifier gradients accumulated across outer steps)."""
    model = make_model()
    inner, outer = rows(splits["inner"], slice(0, 8)), rows(splits["outer"])
    torch.manual_seed(1)
    amp = NeuralAmplifier((8, 8))
    meta = torch.optim.SGD(amp.parameters(), lr=0.0)
    amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=0.5)
    first = [p.grad.clone() for p in amp.parameters()]
    amplifier_outer_step(amp, meta, model, [inner], [outer], virtual_lr=0.5)
    for a, p in zip(first, amp.parameters()):
        torch.testing.assert_close(p.grad, a)


# ------------------------------------------------------------------------------------------------------ metrics


def _accuracy_case():
    """Rows of the 5-token layout with labels on the answer; logits right at '=' for rows 0, 2, 3 only, and the
    (unused) last position always predicting the answer, so a metric that forgets the next-token shift is wrong."""
    ds = build_arithmetic_dataset("a+b", P)
    ids, labels = ds[:6]["input_ids"], ds[:6]["labels"]
    answers = ids[:, -1]
    logits = torch.zeros(6, 5, P + 2)
    wrong = (answers + 1) % P
    right_rows = torch.tensor([True, False, True, True, False, False])
    logits[torch.arange(6), 3, torch.where(right_rows, answers, wrong)] = 5.0
    logits[torch.arange(6), 4, answers] = 5.0
    expected = float(
        np.mean([int(logits[i, 3].argmax()) == int(answers[i]) for i in range(6)])
    )  # per-row loop: the prediction at '=' (index 3) against the answer (index 4)
    return logits, labels, expected


def test_answer_accuracy_from_logits_matches_a_per_row_loop():
    logits, labels, expected = _accuracy_case()
    assert expected == pytest.approx(0.5)
    assert float(answer_accuracy_from_logits(logits, labels)) == pytest.approx(expected)


def test_arithmetic_accuracy_matches_a_per_row_loop():
    logits, labels, expected = _accuracy_case()
    preds = logits.argmax(-1).numpy()
    assert arithmetic_accuracy(EvalPrediction(predictions=preds, label_ids=labels.numpy()))["accuracy"] == (
        pytest.approx(expected)
    )
    assert arithmetic_accuracy(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))[
        "accuracy"
    ] == pytest.approx(expected)


# ------------------------------------------------------------------------------ wrapper state and lr scheduler


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step..:UserWarning")
@pytest.mark.parametrize("kind", ["neuralgrok", "grokfast"])
def test_scheduler_still_drives_the_inner_optimizer_after_load_state_dict(kind):
    """After `load_state_dict` (a resume) a scheduler built on the wrapper must set the lr the inner optimizer uses."""
    lin = torch.nn.Linear(3, 2)
    inner = torch.optim.SGD(lin.parameters(), lr=1.0)
    if kind == "neuralgrok":
        opt = NeuralGrokOptimizer(inner, NeuralAmplifier((4,)), clip_norm=None)
    else:
        opt = GradFilterOptimizer(inner, mode="ema")
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    opt.load_state_dict(saved)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** (step + 1))
    for _ in range(2):
        sched.step()
    assert opt.inner.param_groups[0]["lr"] == pytest.approx(0.125)
    before = [p.detach().clone() for p in lin.parameters()]
    opt.zero_grad()
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert opt.last_lr == pytest.approx(0.125)
    if kind == "grokfast":  # SGD with the scheduled lr on the filtered gradient g + lamb * mu
        delta = (before[1] - lin.bias.detach()) / 0.125
        mu = 0.98 * torch.ones(2) + 0.02 * torch.ones(2)
        torch.testing.assert_close(delta, torch.ones(2) + 2.0 * mu)
