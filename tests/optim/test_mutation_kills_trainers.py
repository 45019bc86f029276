"""Trainer-facing pieces of hf_ext.optim: optimizer options taken from TrainingArguments, the warmup-stable-decay and
trapezoid schedules (closed-form step values), safetensors/JSON optimizer-state round trips, and the per-step update
metrics of `UpdateMetricsCallback` driven by hand."""

import math

import pytest
import torch
from torch import nn
from transformers import TrainerControl, TrainerState

from hf_ext.optim import (
    TrapezoidSchedule,
    UpdateMetricsCallback,
    WarmupFreeTrainer,
    WarmupFreeTrainingArguments,
    get_trapezoid_schedule,
    normalized_optimizer,
)
from hf_ext.optim.serialization import (
    load_optimizer_state,
    save_optimizer_state,
    state_from_json_and_tensors,
    state_to_json_and_tensors,
)
from hf_ext.optim.warmup_trainer import build_normalized_optimizer, wsd_schedule_arguments

from .test_cubic_trainer import TinyLM, _data
from .test_cubic_trainer import _args as _cubic_trainer_args


class Tiny(nn.Module):
    """Embedding -> Linear -> LayerNorm -> head, with a loss; every kind of parameter the grouping rules tell apart."""

    def __init__(self, vocab=16, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.norm(torch.tanh(self.fc(self.emb(input_ids)))))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, weight_decay=0.5)
    base.update(kw)
    return WarmupFreeTrainingArguments(**base)


def _model(seed=0):
    torch.manual_seed(seed)
    return Tiny()


# ---------------------------------------------------------------- optimizer options from the arguments


def test_lion_options_from_arguments_reach_the_optimizer(tmp_path):
    """`--nesterov false` and the Lion betas are the optimizer's, not the class defaults."""
    args = _args(tmp_path, normalized_optimizer="lion", nesterov=False, lion_beta1=0.8, lion_beta2=0.7)
    opt = build_normalized_optimizer(_model(), args)
    assert opt.defaults["nesterov"] is False
    assert tuple(opt.defaults["betas"]) == (0.8, 0.7)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 0.5


@pytest.mark.parametrize("ibc, snr", [(False, True), (True, False)])
def test_lion_a_bias_and_snr_corrections_follow_the_arguments(tmp_path, ibc, snr):
    args = _args(tmp_path, normalized_optimizer="lion_a", inverse_bias_correction=ibc, snr_correction=snr)
    opt = build_normalized_optimizer(_model(), args)
    assert opt.defaults["inverse_bias_correction"] is ibc
    assert opt.defaults["snr_correction"] is snr


def test_lion_ar_rotation_options_follow_the_arguments(tmp_path):
    """An explicit angle, per-tensor norms and no centring reach LionAR; its update-norm EMA defaults to 0 (exact)."""
    args = _args(tmp_path, normalized_optimizer="lion_ar", rotation_angle=0.01, per_neuron=False, zero_mean=False)
    opt = build_normalized_optimizer(_model(), args)
    assert opt.defaults["angle"] == 0.01
    assert opt.defaults["per_neuron"] is False and opt.defaults["zero_mean"] is False
    assert opt.defaults["update_norm_decay"] == 0.0
    args = _args(tmp_path, normalized_optimizer="lion_ar", update_norm_decay=0.5)
    assert build_normalized_optimizer(_model(), args).defaults["update_norm_decay"] == 0.5


def test_rotational_wrappers_take_their_inner_options_and_default_update_norm_decay(tmp_path):
    """rotational_adamw: Adam betas/eps from the arguments and update-norm EMA 0.9 by default; rotational_sgdm: the
    momentum of --sgd_momentum."""
    args = _args(tmp_path, normalized_optimizer="rotational_adamw", adam_epsilon=1e-5, adam_beta1=0.8, adam_beta2=0.9)
    opt = build_normalized_optimizer(_model(), args)
    assert opt.inner.defaults["eps"] == 1e-5
    assert tuple(opt.inner.defaults["betas"]) == (0.8, 0.9)
    assert opt.defaults["update_norm_decay"] == 0.9
    args = _args(tmp_path, normalized_optimizer="rotational_sgdm", sgd_momentum=0.5)
    opt = build_normalized_optimizer(_model(), args)
    assert opt.inner.defaults["momentum"] == 0.5


def test_adamw_baseline_decays_the_trainer_decay_set_including_embeddings(tmp_path):
    """docs: the AdamW baseline runs over the Trainer's decay set (embeddings decayed); biases and norm gains get 0;
    --adam_epsilon is AdamW's eps."""
    model = _model()
    opt = build_normalized_optimizer(model, _args(tmp_path, normalized_optimizer="adamw", adam_epsilon=1e-6))
    assert isinstance(opt, torch.optim.AdamW)
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for p in (model.emb.weight, model.fc.weight, model.head.weight):
        assert wd[id(p)] == 0.5
    for p in (model.fc.bias, model.norm.weight, model.norm.bias):
        assert wd[id(p)] == 0.0
    assert all(g["eps"] == 1e-6 for g in opt.param_groups)


def test_normalized_optimizer_overrides_win_over_the_arguments(tmp_path):
    cls, kwargs = normalized_optimizer("lion", _args(tmp_path), lr=0.25, nesterov=False)
    assert kwargs["lr"] == 0.25 and kwargs["nesterov"] is False and kwargs["weight_decay"] == 0.5
    opt = cls()(_model(), **kwargs)
    assert opt.defaults["lr"] == 0.25 and opt.defaults["nesterov"] is False


# ----------------------------------------------------------------------------- schedules


def _wsd_factor(s, n, w, c):
    """Linear warmup from 0 over w steps, constant, linear decay to 0 over the last c steps (transformers' WSD)."""
    if s < w:
        return s / w
    if s >= n - c:
        return (n - s) / c
    return 1.0


def test_wsd_schedule_arguments_round_the_cooldown_and_check_the_fit(tmp_path):
    """num_decay_steps = round(cooldown_fraction * N), linear decay; warmup + decay may fill N exactly but not more;
    a `num_decay_steps` in lr_scheduler_kwargs is kept."""
    warmup, kw = wsd_schedule_arguments(_args(tmp_path, warmup_steps=2, cooldown_fraction=0.4), 9)
    assert warmup == 2 and kw == {"decay_type": "linear", "num_decay_steps": 4}  # round(3.6)
    warmup, kw = wsd_schedule_arguments(_args(tmp_path, warmup_steps=3, cooldown_fraction=0.5), 6)
    assert (warmup, kw["num_decay_steps"]) == (3, 3)
    with pytest.raises(ValueError, match="exceed"):
        wsd_schedule_arguments(_args(tmp_path, warmup_steps=4, cooldown_fraction=0.5), 6)
    user = _args(tmp_path, warmup_steps=1, lr_scheduler_kwargs={"num_decay_steps": 2})
    assert wsd_schedule_arguments(user, 10)[1]["num_decay_steps"] == 2


def test_trainer_builds_the_trapezoid_with_warmup(tmp_path):
    """WarmupFreeTrainer's default schedule, step by step: linear warmup over warmup_steps, constant, linear decay over
    the last round(cooldown_fraction * N) steps."""
    n, w = 10, 3
    args = _args(tmp_path, warmup_steps=w, cooldown_fraction=0.4, learning_rate=0.1)
    trainer = WarmupFreeTrainer(model=_model(), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=n)
    lrs = []
    for _ in range(n):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs == pytest.approx([0.1 * _wsd_factor(s, n, w, 4) for s in range(n)], abs=1e-12)


def test_trainer_keeps_a_given_optimizer_factory_and_scheduler(tmp_path):
    """`optimizer_cls_and_kwargs` and `optimizers=(opt, sched)` take precedence over the built-in choice, as in
    `Trainer`."""
    from hf_ext.optim import Lion

    args = _args(tmp_path)
    trainer = WarmupFreeTrainer(model=_model(), args=args, optimizer_cls_and_kwargs=normalized_optimizer("lion", args))
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    assert type(trainer.optimizer) is Lion
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = WarmupFreeTrainer(model=model, args=args, optimizers=(opt, sched))
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    assert trainer.lr_scheduler is sched


def test_trapezoid_schedule_factor_closed_form():
    """factor(s) = (s+1)/w in the warmup, 1, then (N - s)/c over the last c = round(f N) steps."""
    n, w, c = 12, 3, 5  # round(0.4 * 12) = round(4.8) = 5
    sched = TrapezoidSchedule(n, warmup_steps=w, cooldown_fraction=0.4)
    assert sched.cooldown_steps == c
    want = [(s + 1) / w if s < w else ((n - s) / c if s >= n - c else 1.0) for s in range(n)]
    assert [sched(s) for s in range(n)] == pytest.approx(want)
    assert TrapezoidSchedule(10, cooldown_fraction=0.36).cooldown_steps == 4  # round(3.6)
    with pytest.raises(ValueError):
        TrapezoidSchedule(10, warmup_steps=-1)


def test_get_trapezoid_schedule_lrs_closed_form():
    n, w = 10, 2
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = get_trapezoid_schedule(opt, num_training_steps=n, warmup_steps=w, cooldown_fraction=0.3)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2 * _wsd_factor(s, n, w, 3) for s in range(n)], abs=1e-12)


# ------------------------------------------------------------------------ state serialisation


def test_state_encoding_round_trip_keeps_types_keys_and_dtypes():
    """Tuples stay tuples, integer keys stay integers, float64/int64/bf16 tensors keep dtype and values."""
    state = {
        "state": {0: {"step": torch.tensor(3, dtype=torch.int64), "m": torch.randn(3, dtype=torch.float64)}, 7: {}},
        "param_groups": [{"betas": (0.9, 0.99), "params": [0, 7], "name": None}],
        "h": torch.randn(2, dtype=torch.bfloat16),
    }
    tensors = {}
    back = state_from_json_and_tensors(state_to_json_and_tensors(state, tensors), tensors)
    assert set(back["state"]) == {0, 7}
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["state"][0]["step"].dtype == torch.int64 and int(back["state"][0]["step"]) == 3
    assert back["state"][0]["m"].dtype == torch.float64
    assert torch.equal(back["state"][0]["m"], state["state"][0]["m"])
    assert back["h"].dtype == torch.bfloat16 and torch.equal(back["h"], state["h"])


def test_saved_optimizer_state_resumes_exactly_in_float64(tmp_path):
    """Adam on float64 parameters: save after 2 steps, load into a fresh optimizer, 2 more steps equal the
    uninterrupted run bit for bit (moments must keep float64)."""

    def run(params, opt, steps):
        for k in steps:
            opt.zero_grad()
            (params[0] * torch.arange(1.0, 4.0, dtype=torch.float64) * (k + 1)).pow(3).sum().backward()
            opt.step()

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64) * 1e-3)
    opt = torch.optim.Adam([w], lr=1e-3, betas=(0.8, 0.9))
    run([w], opt, range(2))
    save_optimizer_state(opt, str(tmp_path))
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = torch.optim.Adam([w2], lr=1e-3, betas=(0.8, 0.9))
    load_optimizer_state(opt2, str(tmp_path))
    assert opt2.state[w2]["exp_avg_sq"].dtype == torch.float64
    run([w], opt, range(2, 4))
    run([w2], opt2, range(2, 4))
    assert torch.equal(w, w2)


def test_resume_from_a_pickled_trainer_checkpoint_falls_back_to_trainer(tmp_path):
    """A checkpoint written by the stock Trainer (optimizer.pt / scheduler.pt, no safetensors state) still loads."""
    args = _args(tmp_path, learning_rate=0.1, warmup_steps=0, cooldown_fraction=0.5)
    src = WarmupFreeTrainer(model=_model(), args=args)
    src.create_optimizer_and_scheduler(num_training_steps=8)
    for _ in range(5):
        src.lr_scheduler.step()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(src.optimizer.state_dict(), ckpt / "optimizer.pt")
    torch.save(src.lr_scheduler.state_dict(), ckpt / "scheduler.pt")
    dst = WarmupFreeTrainer(model=_model(), args=args)
    dst.create_optimizer_and_scheduler(num_training_steps=8)
    dst._load_optimizer_and_scheduler(str(ckpt))
    assert dst.lr_scheduler.get_last_lr() == pytest.approx([0.1 * 3 / 4] * len(dst.lr_scheduler.get_last_lr()))


# ------------------------------------------------------------------------------ update metrics


class _Args:
    output_dir = "."


def _drive(cb, model, opt, steps, state=None, logs_every=None):
    """Call the callback around `steps` Adam steps on a fixed loss, like Trainer does; returns (state, logs, snaps)."""
    state = state or TrainerState()
    control = TrainerControl()
    logs, snaps = [], []
    x = torch.randint(0, 16, (4, 5), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        opt.zero_grad()
        model(x, labels=x)["loss"].backward()
        snaps.append({n: p.detach().clone() for n, p in model.named_parameters()})
        cb.on_pre_optimizer_step(_Args, state, control, model=model, optimizer=opt)
        opt.step()
        cb.on_optimizer_step(_Args, state, control, model=model, optimizer=opt)
        state.global_step += 1
        if logs_every and state.global_step % logs_every == 0:
            row = {"loss": 1.0}
            cb.on_log(_Args, state, control, logs=row)
            logs.append(row)
    snaps.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return state, logs, snaps


def _angles(a, b):
    a, b = a.double(), b.double()
    return torch.arccos(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(-1, 1))


class _TinyWithBias(Tiny):
    """Tiny plus a 2-dim additive position bias (named like a bias, so outside the weight-decay set)."""

    def __init__(self):
        super().__init__()
        self.pos_bias = nn.Parameter(0.1 * torch.randn(5, 16))

    def forward(self, input_ids, labels=None):
        logits = self.head(self.norm(torch.tanh(self.fc(self.emb(input_ids))))) + self.pos_bias
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def test_update_angle_pools_neurons_of_decayed_matrices_only():
    """`update/angle` is the mean over all neurons (rows) of the weight-decayed 2+-dim tensors: emb (16 rows),
    fc (8) and head (16); not the LayerNorm gain, not the 2-dim `pos_bias` (not decayed), not a mean of per-tensor
    means."""
    torch.manual_seed(0)
    model = _TinyWithBias()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    cb = UpdateMetricsCallback(plot_path=None)
    _, _, snaps = _drive(cb, model, opt, 1)
    before, after = snaps
    angles = torch.cat([_angles(before[n], after[n]) for n in ("emb.weight", "fc.weight", "head.weight")])
    assert angles.numel() == 40
    assert float(_angles(before["pos_bias"], after["pos_bias"]).mean()) > 0
    assert cb.history[0]["update/angle"] == pytest.approx(float(angles.mean()), rel=1e-9)


def test_angular_update_measures_obtuse_rotations():
    """Angles above pi/2 are reported as such: a reversed row is pi, (1, 0) -> (-1, 1) is 3 pi / 4."""
    from hf_ext.optim import angular_update

    old = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    new = torch.tensor([[-1.0, 1.0], [0.0, -3.0], [1.0, 1.0]])
    got = angular_update(old, new)
    assert got.tolist() == pytest.approx([3 * math.pi / 4, math.pi, 0.0], abs=1e-6)


def test_every_n_steps_measures_the_nth_steps_and_logs_each_row_once():
    """every_n_steps=2 measures optimizer steps 2 and 4 (rows `step` 2, 4); each row reaches one log line only."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    cb = UpdateMetricsCallback(every_n_steps=2, plot_path=None)
    state, logs, snaps = _drive(cb, model, opt, 4, logs_every=1)
    assert [r["step"] for r in cb.history] == [2, 4]
    want = math.sqrt(sum(float((snaps[2][n] - snaps[1][n]).double().pow(2).sum()) for n in snaps[1]))
    assert cb.history[0]["update/l2_norm"] == pytest.approx(want, rel=1e-9)
    assert ["update/l2_norm" in row for row in logs] == [False, True, False, True]
    assert [r["step"] for r in state.log_history] == [2, 4]


def test_gradient_momentum_cosine_uses_adams_first_moment():
    """With AdamW the momentum is `exp_avg` before the step absorbs the gradient: at step 2 the cosine between the
    step-2 gradient and the step-1 moment (1 - b1) g1, i.e. cos(g2, g1)."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    cb = UpdateMetricsCallback(plot_path=None)
    x = torch.randint(0, 16, (4, 5), generator=torch.Generator().manual_seed(0))
    state, control, grads = TrainerState(), TrainerControl(), []
    for _ in range(2):
        opt.zero_grad()
        model(x, labels=x)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
        cb.on_pre_optimizer_step(_Args, state, control, model=model, optimizer=opt)
        opt.step()
        cb.on_optimizer_step(_Args, state, control, model=model, optimizer=opt)
        state.global_step += 1
    want = float(grads[1] @ grads[0] / (grads[1].norm() * grads[0].norm()))
    assert math.isnan(cb.history[0]["update/grad_momentum_cos"])
    # the moment is (1 - b1) g1 rounded to float32, so the cosine agrees with the float64 one to float32 rounding
    # (1e-9 relative held by chance on one build and not on another); any other momentum is off by far more
    assert cb.history[1]["update/grad_momentum_cos"] == pytest.approx(want, rel=1e-6)


def test_probe_batch_leaves_the_model_in_training_mode():
    model = _model()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    cb = UpdateMetricsCallback(probe_batch={"input_ids": torch.zeros(1, 3, dtype=torch.long)}, plot_path=None)
    _drive(cb, model, opt, 1)
    assert model.training and not math.isnan(cb.history[0]["update/rrc"])


def test_resume_hands_the_last_measured_row_to_the_next_log():
    """On resume the callback takes back its rows from log_history; a row measured after the last log line is still
    pending and goes into the next log, as without the interruption."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    cb = UpdateMetricsCallback(plot_path=None)
    state, _, _ = _drive(cb, model, opt, 3)  # three rows, no log line yet
    state.log_history.insert(0, {"loss": 2.0, "step": 0})
    fresh = UpdateMetricsCallback(plot_path=None)
    fresh.on_train_begin(_Args, state, TrainerControl())
    assert [r["step"] for r in fresh.history] == [1, 2, 3]
    logs = {"loss": 1.0}
    fresh.on_log(_Args, state, TrainerControl(), logs=logs)
    assert logs["update/l2_norm"] == cb.history[-1]["update/l2_norm"]


# ------------------------------------------------------------------------------ cubic Newton trainer


class _DropLM(TinyLM):
    """The cubic tests' model with dropout after the embedding (so train and eval mode give different losses)."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.drop(torch.tanh(self.emb(input_ids))))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def _cubic_args(out, **kw):
    """test_cubic_trainer's arguments, logging every 2 steps, not saving, with the default momentum and alpha."""
    base = dict(logging_steps=2, save_strategy="no", cubic_momentum="hessian_corrected", cubic_alpha=0.1)
    base.update(kw)
    return _cubic_trainer_args(out, **base)


def _cubic_model(dropout=0.0):
    torch.manual_seed(0)
    return _DropLM(dropout=dropout)


def test_cubic_arguments_reach_the_optimizer(tmp_path):
    from hf_ext.optim import CubicNewtonTrainer

    args = _cubic_args(
        tmp_path,
        cubic_alpha_power=0.5,
        cubic_beta_power=0.25,
        cubic_max_extrapolation=3.0,
        cubic_hessian="window",
        cubic_hessian_window=5,
        cubic_solver="gd",
        cubic_gd_iters=17,
        cubic_max_step_norm=0.5,
        cubic_convention="M/3",
        cubic_momentum="extrapolated",
    )
    trainer = CubicNewtonTrainer(model=_cubic_model(), args=args, train_dataset=_data())
    opt = trainer.create_optimizer()
    want = dict(alpha_power=0.5, beta_power=0.25, max_extrapolation=3.0, hessian="window", hessian_window=5,
                solver="gd", gd_iters=17, max_step_norm=0.5, cubic_convention="M/3", momentum="extrapolated", M=5.0)
    assert {k: opt.defaults[k] for k in want} == want


def test_cubic_logged_values_are_means_over_the_logging_window(tmp_path):
    """logging_steps=2: cubic/model_decrease and cubic/step_norm are the means of the two steps since the last log,
    cubic/M the last step's M (adaptive M changes it), cubic/oracle_calls the cumulative gradient + Hessian + HVP
    evaluations; evaluation logs in between do not use up the window."""
    from hf_ext.optim import CubicNewtonTrainer

    args = _cubic_args(tmp_path, cubic_momentum="none", cubic_M_rule="adaptive", cubic_M=0.01, eval_strategy="steps",
                       eval_steps=1, per_device_eval_batch_size=8)
    data = _data()
    trainer = CubicNewtonTrainer(model=_cubic_model(), args=args, train_dataset=data, eval_dataset=data[:4])
    trainer.train()
    hist = trainer.cubic_history
    assert len(hist) == 4
    rows = [r for r in trainer.state.log_history if "loss" in r and "cubic/M" in r]
    assert [r["step"] for r in rows] == [2, 4]
    calls = 0
    for k, row in enumerate(rows):
        pair = hist[2 * k : 2 * k + 2]
        calls += sum(s.grad_evals + s.hess_evals + s.hvp_evals for s in pair)
        assert row["cubic/model_decrease"] == pytest.approx((pair[0].model_decrease + pair[1].model_decrease) / 2)
        assert row["cubic/step_norm"] == pytest.approx((pair[0].step_norm + pair[1].step_norm) / 2)
        assert row["cubic/M"] == pytest.approx(pair[1].M)
        assert row["cubic/oracle_calls"] == calls
    assert hist[0].step_norm != pytest.approx(hist[1].step_norm)
    assert len({s.M for s in hist}) > 1


def test_cubic_step_uses_the_model_in_eval_mode(tmp_path):
    """With dropout in the model the trainer's step equals a CubicNewton step on the eval-mode loss of the batch (the
    gradient and its HVPs must see one deterministic function)."""
    from hf_ext.optim import CubicNewton, CubicNewtonTrainer
    from hf_ext.optim.cubic_newton import make_flat_loss

    data = _data(4)
    args = _cubic_args(tmp_path, max_steps=1, logging_steps=1, cubic_momentum="none")
    trainer = CubicNewtonTrainer(model=_cubic_model(dropout=0.5), args=args, train_dataset=data)
    trainer.train()
    ref = _cubic_model(dropout=0.5).eval()
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    opt = CubicNewton([p for p in ref.parameters()], **args.cubic_newton_kwargs())
    opt.step(lambda: make_flat_loss(ref, batch)[0])
    for a, b in zip(trainer.model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cubic_window_hessian_resumes_exactly(tmp_path):
    """cubic_hessian="window": resuming from checkpoint-2 rebuilds the window's loss functions from the stored batches,
    so the weights after step 4 equal the uninterrupted run's."""
    from hf_ext.optim import CubicNewtonTrainer

    kw = dict(cubic_hessian="window", cubic_hessian_window=2, cubic_momentum="ema", cubic_alpha=0.5, cubic_beta=0.5,
              save_strategy="steps", save_steps=2)
    data = _data()
    full = CubicNewtonTrainer(model=_cubic_model(), args=_cubic_args(tmp_path / "full", **kw), train_dataset=data)
    full.train()
    resumed = CubicNewtonTrainer(model=_cubic_model(), args=_cubic_args(tmp_path / "res", **kw), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)
