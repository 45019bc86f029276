"""NeuralGrokTrainer: transform once per optimizer step, outer steps, logging, checkpoints and resume."""

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    GrokkingCallback,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    arithmetic_accuracy,
    build_arithmetic_dataset,
    preprocess_logits_for_accuracy,
    split_arithmetic_dataset,
)

P = 11


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)


def make_model(seed=0):
    torch.manual_seed(seed)
    return GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=P + 2, hidden_size=32, num_attention_heads=4))


def make_args(out, transform="neuralgrok", **kw):
    base = dict(
        output_dir=str(out),
        gradient_transform=transform,
        max_steps=8,
        per_device_train_batch_size=8,
        outer_every=2,
        amplifier_hidden_dims=[8, 8],
        meta_learning_rate=1e-2,
        learning_rate=1e-2,
        logging_steps=2,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    base.update(kw)
    return NeuralGrokConfig(**base)


def make_trainer(args, splits, model=None, **kw):
    outer = splits["outer"] if args.gradient_transform == "neuralgrok" else None
    train = splits["inner"] if args.gradient_transform == "neuralgrok" else splits["train"]
    return NeuralGrokTrainer(model=model or make_model(), args=args, train_dataset=train, outer_dataset=outer, **kw)


def test_neuralgrok_trainer_logs_entropy_and_updates_amplifier(splits, tmp_path):
    trainer = make_trainer(make_args(tmp_path), splits)
    amp_before = [p.detach().clone() for p in trainer.amplifier.parameters()]
    trainer.train()
    assert trainer.num_outer_steps == 4
    assert trainer.transform_optimizer.num_transforms == 8
    assert all(not torch.equal(a, p) for a, p in zip(amp_before, trainer.amplifier.parameters()))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for key in ("age_raw", "age_transformed", "grad_norm_raw", "grad_norm_transformed", "awe", "train_accuracy"):
        assert all(torch.isfinite(torch.tensor(entry[key])) for entry in logs), key
    assert "outer_loss" in logs[-1]
    # the transformed gradient has norm c per tensor: global norm c * sqrt(#tensors) before the clip
    n_tensors = len(list(trainer.model.parameters()))
    assert logs[-1]["grad_norm_transformed"] == pytest.approx((n_tensors**0.5), rel=1e-4)


@pytest.mark.parametrize("transform", ["neuralgrok", "normalize", "grokfast_ema", "grokfast_ma", "none"])
def test_one_transform_per_optimizer_step_under_gradient_accumulation(splits, tmp_path, transform):
    args = make_args(tmp_path, transform, max_steps=3, gradient_accumulation_steps=3, per_device_train_batch_size=4)
    trainer = make_trainer(args, splits)
    calls = {"transform": 0, "micro": 0}
    if transform == "neuralgrok":
        original = trainer.amplifier.transform_

        def counting(params):
            calls["transform"] += 1
            return original(params)

        trainer.amplifier.transform_ = counting
    original_step = trainer.training_step

    def counting_step(*a, **k):
        calls["micro"] += 1
        return original_step(*a, **k)

    trainer.training_step = counting_step
    trainer.train()
    assert calls["micro"] == 9
    assert trainer.state.global_step == 3
    assert trainer.transform_optimizer.num_transforms == 3
    if transform == "neuralgrok":
        assert calls["transform"] == 3
        assert trainer.num_outer_steps == 1


def test_recompute_outer_step_under_accumulation_with_a_short_micro_batch_equals_one_batch(splits, tmp_path):
    """Audit gh10 finding 3: with gradient accumulation, outer_gradient="recompute" took g_hat of the mean of the
    micro-batches' mean losses, while the real step (num_items_in_batch) weights every labelled token alike: with a
    short last micro-batch ([4, 4, 1]) the amplifier left GA 3 x batch 4 and GA 1 x batch 12 on the same examples."""

    def run(batch_size, accumulation):
        model = make_model().double()
        args = make_args(
            tmp_path / f"ga{accumulation}", max_steps=2, per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, outer_every=1, warmup_steps=0, lr_scheduler_type="constant",
            logging_steps=100, adam_epsilon=1e-3, track_entropy=False,
        )  # fmt: skip
        trainer = NeuralGrokTrainer(
            model=model, args=args, train_dataset=splits["inner"].select(range(21)), outer_dataset=splits["outer"]
        )
        trainer.amplifier.double()
        # SGD meta step: Adam would turn rounding-level amplifier gradients into full-size steps
        trainer.meta_optimizer = torch.optim.SGD(trainer.amplifier.parameters(), lr=1.0)
        trainer.train()
        flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, trainer.amplifier)]
        return (*flat, trainer.last_outer_loss)

    model_ga, amp_ga, outer_ga = run(4, 3)  # second step: micro-batches of 4, 4 and 1 examples
    model_one, amp_one, outer_one = run(12, 1)
    torch.testing.assert_close(model_ga, model_one, rtol=0, atol=1e-12)  # the real steps agree (token-weighted)
    torch.testing.assert_close(amp_ga, amp_one, rtol=0, atol=1e-12)
    assert outer_ga == pytest.approx(outer_one, rel=1e-12, abs=0)


class _NoLossKwargsDecoder(GrokDecoderForCausalLM):
    accepts_loss_kwargs = False  # as a model whose forward takes no **kwargs / num_items_in_batch


def _train_recording_steps_and_g_hats(trainer):
    """Train, recording every micro-batch with its `num_items_in_batch` and every g_hat the outer step transforms."""
    steps, g_hats = [], []
    original_step, original_transform = trainer.training_step, trainer.amplifier.transform_many

    def recording_step(model, inputs, num_items_in_batch=None):
        steps.append(({k: v.clone() for k, v in inputs.items()}, num_items_in_batch))
        return original_step(model, inputs, num_items_in_batch)

    def recording_transform(grads, *a, **k):
        if trainer._in_outer_step:
            g_hats.append([g.detach().clone() for g in grads])
        return original_transform(grads, *a, **k)

    trainer.training_step = recording_step
    trainer.amplifier.transform_many = recording_transform
    trainer.train()
    return steps, g_hats


def test_recompute_outer_step_weights_micro_batches_equally_without_num_items_in_batch(splits, tmp_path):
    """Audit rv10b finding 1: for a model without loss kwargs the Trainer passes no num_items_in_batch and the real step
    divides each micro-batch's mean loss by the accumulation steps (equal weights), but g_hat weighted the micro-batches
    [4, 4, 1] by labelled tokens anyway. g_hat must be the gradient of the mean of the three micro-batch means."""
    torch.manual_seed(0)
    model = _NoLossKwargsDecoder(GrokDecoderConfig(vocab_size=P + 2, hidden_size=32, num_attention_heads=4)).double()
    args = make_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=3, outer_every=1,
        warmup_steps=0, lr_scheduler_type="constant", logging_steps=100, track_entropy=False,
    )  # fmt: skip
    trainer = NeuralGrokTrainer(
        model=model, args=args, train_dataset=splits["inner"].select(range(21)), outer_dataset=splits["outer"]
    )
    trainer.amplifier.double()
    assert trainer.model_accepts_loss_kwargs is False
    steps, g_hats = _train_recording_steps_and_g_hats(trainer)
    last = steps[3:]  # the second optimizer step: micro-batches of 4, 4 and 1 examples
    assert [len(b["input_ids"]) for b, _ in last] == [4, 4, 1]
    assert all(n is None for _, n in steps)  # the real step weights its micro-batch means equally
    # reference: the gradient of the mean of the micro-batch mean losses at the final parameters, where the last
    # outer step ran (it never changes the model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    loss = sum(model(**batch).loss for batch, _ in last) / 3
    expected = torch.autograd.grad(loss, params)
    assert len(g_hats) == 2
    for got, want in zip(g_hats[-1], expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _brier_loss(outputs, labels, num_items_in_batch=None):
    """A `compute_loss_func` other than cross-entropy: (1 - p(answer))^2 per labelled next token, over the step's."""
    probs = outputs["logits"][:, :-1].softmax(-1)
    labels = labels[:, 1:]
    mask = labels != -100
    per_token = (1 - probs[mask].gather(-1, labels[mask][:, None]).squeeze(-1)) ** 2
    return per_token.sum() / (mask.sum() if num_items_in_batch is None else num_items_in_batch)


def _smoothed_token_losses(logits, labels, eps):
    """Label-smoothed cross-entropy of every labelled next token, written out: (1 - eps) NLL + eps mean_v(-log p_v)."""
    log_probs = logits[:, :-1].log_softmax(-1)
    labels = labels[:, 1:]
    mask = labels != -100
    log_probs, labels = log_probs[mask], labels[mask]
    return -(1 - eps) * log_probs.gather(-1, labels[:, None]).squeeze(-1) - eps * log_probs.mean(-1)


@pytest.mark.parametrize("loss", ["label_smoothing", "label_smoothing_without_loss_kwargs", "compute_loss_func"])
def test_recompute_outer_step_takes_the_gradient_of_the_real_steps_own_loss(splits, tmp_path, loss):
    """Audit rv12 finding 2: the real step minimises Trainer.compute_loss (LabelSmoother, a compute_loss_func), but the
    recompute outer step took g_hat from the model's own loss, `model(**batch).loss` (plain cross-entropy): 0.18 off on
    a gradient of size 0.65 with label smoothing 0.3. g_hat must be the gradient of the step's own loss, normalised as
    the real step normalises it under gradient accumulation (micro-batches [4, 4, 1]): by all the step's labelled tokens
    with `num_items_in_batch`, each micro-batch's mean divided by the accumulation steps without it."""
    eps = 0.3
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=P + 2, hidden_size=32, num_attention_heads=4)).double()
    if loss == "label_smoothing_without_loss_kwargs":
        # on the instance: Trainer shifts the labels for the label smoothing by the class name, a causal LM's
        model.accepts_loss_kwargs = False
    kw = dict(label_smoothing_factor=eps) if loss.startswith("label_smoothing") else {}
    args = make_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=3, outer_every=1,
        warmup_steps=0, lr_scheduler_type="constant", logging_steps=100, track_entropy=False, **kw,
    )  # fmt: skip
    trainer = NeuralGrokTrainer(
        model=model, args=args, train_dataset=splits["inner"].select(range(21)), outer_dataset=splits["outer"],
        compute_loss_func=_brier_loss if loss == "compute_loss_func" else None,
    )  # fmt: skip
    trainer.amplifier.double()
    steps, g_hats = _train_recording_steps_and_g_hats(trainer)
    last = [batch for batch, _ in steps[3:]]  # the second optimizer step: micro-batches of 4, 4 and 1 examples
    assert [len(b["input_ids"]) for b in last] == [4, 4, 1]
    assert all((n is None) == (loss == "label_smoothing_without_loss_kwargs") for _, n in steps)
    # reference, written out independently of Trainer: the step's loss at the final parameters, where the last outer
    # step ran (it never changes the model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    logits = [model(input_ids=b["input_ids"]).logits for b in last]
    if loss == "compute_loss_func":
        objective = sum(_brier_loss({"logits": x}, b["labels"], num_items_in_batch=1) for x, b in zip(logits, last))
        objective = objective / sum(int((b["labels"][:, 1:] != -100).sum()) for b in last)
    else:
        per_batch = [_smoothed_token_losses(x, b["labels"], eps) for x, b in zip(logits, last)]
        if loss == "label_smoothing":  # every labelled token of the step alike (num_items_in_batch)
            objective = torch.cat(per_batch).mean()
        else:  # the mean of the micro-batches' means (no num_items_in_batch)
            objective = sum(t.mean() for t in per_batch) / 3
    expected = torch.autograd.grad(objective, params)
    assert len(g_hats) == 2
    for got, want in zip(g_hats[-1], expected):  # LabelSmoother sums its smoothing term in float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


def test_grokfast_ema_sees_the_accumulated_gradient(splits, tmp_path):
    """With GA the EMA starts at the full-batch gradient of step 1 (not at a micro-batch gradient)."""
    args = make_args(
        tmp_path,
        "grokfast_ema",
        max_steps=1,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        learning_rate=0.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
    )
    trainer = make_trainer(args, splits)
    trainer.train()
    ema = trainer.transform_optimizer._ema
    assert len(ema) == len(list(trainer.model.parameters()))
    # recompute the full-batch gradient of the 8 examples the first step used
    loader = trainer.get_train_dataloader()
    model = trainer.model
    model.zero_grad()
    first = []
    for i, batch in enumerate(loader):
        if i == 2:
            break
        first.append(batch)
    ids = torch.cat([b["input_ids"] for b in first])
    labels = torch.cat([b["labels"] for b in first])
    model(input_ids=ids, labels=labels).loss.backward()
    params = [p for group in trainer.transform_optimizer.param_groups for p in group["params"]]
    for index, p in enumerate(params):
        torch.testing.assert_close(ema[index], p.grad, rtol=1e-4, atol=1e-6)


def test_coupled_weight_decay_uses_reference_adam(splits, tmp_path):
    trainer = make_trainer(make_args(tmp_path, max_steps=2, coupled_weight_decay=True, weight_decay=0.01), splits)
    trainer.train()
    inner = trainer.transform_optimizer.inner
    assert type(inner) is torch.optim.Adam
    assert [g["weight_decay"] for g in inner.param_groups] == [0.01]
    assert len(inner.param_groups[0]["params"]) == len(list(trainer.model.parameters()))


def test_config_defaults_to_the_reference_adam(splits, tmp_path):
    """The default is the setting that reproduces: torch.optim.Adam with coupled L2 weight decay (not AdamW)."""
    args = NeuralGrokConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, use_cpu=True)
    assert args.coupled_weight_decay is True
    trainer = NeuralGrokTrainer(
        model=make_model(), args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"]
    )
    trainer.create_optimizer()
    assert type(trainer.transform_optimizer.inner) is torch.optim.Adam


def test_normalize_control_in_trainer(splits, tmp_path):
    """`normalize`: every tensor rescaled to norm c and clipped like NeuralGrok, with no amplifier or outer step."""
    trainer = make_trainer(make_args(tmp_path, "normalize", max_steps=4, amplifier_c=0.5), splits)
    assert trainer.amplifier is None and trainer.meta_optimizer is None
    trainer.train()
    n_tensors = len(list(trainer.model.parameters()))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["grad_norm_transformed"] == pytest.approx(0.5 * n_tensors**0.5, rel=1e-4)
    assert trainer.num_outer_steps == 0 and trainer.transform_optimizer.num_transforms == 4
    assert all(entry["weight_norm"] > 0 for entry in logs)


def test_grokking_callback_reports_mean_step_time_including_outer_steps():
    """Three cheap steps and one expensive outer step: the mean counts the outer step, the median hides it."""
    callback = GrokkingCallback()
    callback.step_seconds = [0.1, 0.1, 0.1, 0.5]
    assert callback.seconds_per_step == pytest.approx(0.2)
    assert callback.median_seconds_per_step == pytest.approx(0.1)


def _train_state(trainer):
    state = {f"model.{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}
    if trainer.amplifier is not None:
        state.update({f"amp.{n}": p.detach().clone() for n, p in trainer.amplifier.named_parameters()})
        for i, s in trainer.meta_optimizer.state.items():
            state.update({f"meta.{i}.{k}": v.clone() for k, v in s.items()})
    return state


@pytest.mark.parametrize(
    "transform, outer_gradient",
    [("neuralgrok", "recompute"), ("neuralgrok", "next_step"), ("grokfast_ema", "recompute")],
)
def test_resume_matches_uninterrupted_run(splits, tmp_path, transform, outer_gradient):
    # with next_step, checkpoint-4 is written while the outer step of step 4 waits for step 5's gradient
    kw = dict(outer_gradient=outer_gradient)
    args = make_args(tmp_path / "run", transform, save_strategy="steps", save_steps=4, max_steps=8, **kw)
    full = make_trainer(args, splits, callbacks=[GrokkingCallback(target=1.0)])
    full.train()
    expected = _train_state(full)
    ckpt = tmp_path / "run" / "checkpoint-4"
    names = set(os.listdir(ckpt))
    assert {"gradient_transform_state.safetensors", "gradient_transform_state.json", "neuralgrok_state.json"} <= names
    if transform == "neuralgrok":
        assert {"neuralgrok_amplifier.safetensors", "neuralgrok_meta_optimizer.safetensors"} <= names

    callback = GrokkingCallback(target=1.0)
    resumed = make_trainer(
        make_args(tmp_path / "resumed", transform, max_steps=8, **kw),
        splits,
        model=make_model(seed=5),
        callbacks=[callback],
    )
    resumed.train(resume_from_checkpoint=str(ckpt))
    # the step times of the first 4 steps come back from the checkpoint (mean step time covers the whole run)
    assert len(callback.step_seconds) == 8
    got = _train_state(resumed)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)
    if transform == "neuralgrok":
        # outer steps after steps 2, 4, 6, 8; next_step runs them in steps 3, 5, 7 (the last one never comes)
        assert resumed.num_outer_steps == full.num_outer_steps == (4 if outer_gradient == "recompute" else 3)
    else:
        assert resumed.transform_optimizer.num_transforms == 8


def test_next_step_outer_gradient_is_the_following_steps_own_gradient(splits, tmp_path, monkeypatch):
    """outer_gradient="next_step": after every T-th step the outer step waits for the next optimizer step and
    transforms its raw gradient, at the parameters that step's backward used; the model is never run again for it."""
    from transformers import TrainerCallback

    import hf_ext.neuralgrok.trainer as trainer_module

    calls, params_after_step = [], {}
    real_outer_step = trainer_module.amplifier_outer_step

    class AfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            params_after_step[state.global_step] = [p.detach().clone() for p in trainer.model.parameters()]

    def spy(amplifier, meta, model, inner_batches, outer_batches, virtual_lr, grad_reducer=None, g_hat=None, **kw):
        raw = trainer.transform_optimizer._snapshots["raw"]  # the raw gradient copy of the step in progress
        calls.append(
            dict(
                step=trainer.state.global_step,  # not yet incremented: the step in progress is this + 1
                inner_batches=len(inner_batches),
                g_hat_is_raw=all(torch.equal(g, r) for g, r in zip(g_hat, raw)),
                params=[p.detach().clone() for p in model.parameters()],
            )
        )
        return real_outer_step(
            amplifier, meta, model, inner_batches, outer_batches, virtual_lr, grad_reducer=grad_reducer, g_hat=g_hat, **kw
        )

    monkeypatch.setattr(trainer_module, "amplifier_outer_step", spy)
    args = make_args(tmp_path, outer_gradient="next_step", outer_every=2, max_steps=7)
    trainer = make_trainer(args, splits, callbacks=[AfterStep()])
    trainer.train()
    assert [c["step"] for c in calls] == [2, 4, 6] and trainer.num_outer_steps == 3
    for call in calls:
        assert call["inner_batches"] == 0 and call["g_hat_is_raw"]
        for got, want in zip(call["params"], params_after_step[call["step"]]):
            assert torch.equal(got, want)


def test_resume_with_other_transform_is_rejected(splits, tmp_path):
    full = make_trainer(make_args(tmp_path / "run", "none", save_strategy="steps", save_steps=2, max_steps=2), splits)
    full.train()
    other = make_trainer(make_args(tmp_path / "other", "grokfast_ema", max_steps=4), splits)
    with pytest.raises(ValueError, match="gradient_transform"):
        other.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_resume_with_other_outer_gradient_is_rejected(splits, tmp_path):
    run = make_args(tmp_path / "run", save_strategy="steps", save_steps=2, max_steps=2)
    make_trainer(run, splits).train()
    other = make_trainer(make_args(tmp_path / "other", max_steps=4, outer_gradient="next_step"), splits)
    with pytest.raises(ValueError, match="outer_gradient"):
        other.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


# the forward of step 3's first micro-batch; of step 4's second (its first has had its backward)
@pytest.mark.parametrize("forward", [5, 8])
def test_resume_after_an_interrupt_inside_a_forward_equals_the_uninterrupted_run(splits, tmp_path, forward):
    """Audit rv12 finding 1: training_step keeps each micro-batch for the recompute outer step before its forward, and
    a new train() call kept what an interrupted one (Ctrl-C or an error inside a forward or backward) had left. A resume
    on the same trainer then took the stale micro-batch(es) into the first outer step's g_hat too: its amplifier ended
    2e-3 off the uninterrupted run's, while a fresh trainer resumed from the same checkpoint was exact."""
    kw = dict(max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=2, outer_every=1,
              save_strategy="steps", save_steps=2)  # fmt: skip
    full = make_trainer(make_args(tmp_path / "full", **kw), splits)
    full.train()
    expected = _train_state(full)
    same = make_trainer(make_args(tmp_path / "same", **kw), splits)
    forwards = {"n": 0}

    def interrupt(module, inputs):  # 2 micro-batches per step
        if not same._in_outer_step:
            forwards["n"] += 1
            if forwards["n"] == forward:
                raise KeyboardInterrupt

    hook = same.model.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        same.train()
    hook.remove()
    same.train(resume_from_checkpoint=True)  # checkpoint-2
    fresh = make_trainer(make_args(tmp_path / "fresh", **kw), splits, model=make_model(seed=5))
    fresh.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    for resumed in (same, fresh):
        got = _train_state(resumed)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], msg=key)
        assert resumed.num_outer_steps == full.num_outer_steps == 4


def test_a_new_train_call_starts_without_the_last_calls_pending_next_step_outer_step(splits, tmp_path):
    """outer_gradient="next_step": the outer step due after the last step of a call (which never comes) was run by the
    first step of the next train() call on the same trainer, a new run from step 0, as no fresh trainer's run does."""
    trainer = make_trainer(make_args(tmp_path, outer_gradient="next_step", outer_every=2, max_steps=2), splits)
    trainer.train()
    assert trainer.num_outer_steps == 0 and trainer._outer_due
    trainer.train()
    assert trainer.num_outer_steps == 0


def test_auto_find_batch_size_retry_starts_without_the_failed_attempts_micro_batches(splits, tmp_path):
    """`auto_find_batch_size` reruns the training loop with a smaller batch after an out-of-memory error, within the
    same train() call: the failed attempt's micro-batches (8 rows each) went into the first outer step's g_hat too,
    and its first micro-batch's rows into the first logged train_accuracy."""
    args = make_args(tmp_path, max_steps=2, gradient_accumulation_steps=2, outer_every=1, auto_find_batch_size=True)
    trainer = make_trainer(args, splits)
    forwards, outer_batches = {"n": 0}, []

    def out_of_memory(module, inputs):  # in the first step's second micro-batch
        if not trainer._in_outer_step:
            forwards["n"] += 1
            if forwards["n"] == 2:
                raise RuntimeError("CUDA out of memory. (simulated)")

    original = trainer._run_outer_step

    def recording(batches=None, **kw):
        outer_batches.append([len(b["input_ids"]) for b in batches])
        return original(batches=batches, **kw)

    summed = trainer._sum_train_accuracy_over_ranks
    rows_at_log = []

    def counting():  # the rows behind the logged train_accuracy (the failed attempt's first micro-batch must not count)
        rows_at_log.append(trainer._acc_rows)
        summed()

    trainer.model.register_forward_pre_hook(out_of_memory)
    trainer._run_outer_step = recording
    trainer._sum_train_accuracy_over_ranks = counting
    trainer.train()
    size = trainer._train_batch_size
    assert size < 8 and outer_batches == [[size, size], [size, size]]
    assert rows_at_log[0] == 2 * 2 * size  # logging_steps 2, two micro-batches per step


def test_resume_from_a_checkpoint_saved_with_save_only_model_is_refused_as_such(splits, tmp_path):
    """NeuralGrokTrainer refused a `save_only_model=True` checkpoint with a false reason ("not written by
    NeuralGrokTrainer"), after loading its weights; the refusal now says what the checkpoint is and what to do."""
    run = make_args(tmp_path / "run", save_strategy="steps", save_steps=2, max_steps=2, save_only_model=True)
    make_trainer(run, splits).train()
    other = make_trainer(make_args(tmp_path / "other", max_steps=4), splits, model=make_model(seed=5))
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match="saved with save_only_model=True: it holds only the model weights") as err:
        other.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert "not written by" not in str(err.value)
    for key, value in other.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_first_train_accuracy_after_a_resume_equals_the_uninterrupted_runs(splits, tmp_path, interrupt_after_step):
    """`train_accuracy` is the mean over the micro-batches since the last log. Those running sums were not reset by a
    new train() call (an interrupted call's micro-batches leaked into the first log of a resume on the same trainer)
    nor saved with a checkpoint (a checkpoint between two logs lost its micro-batches)."""
    def accuracies(trainer):
        return {r["step"]: r["train_accuracy"] for r in trainer.state.log_history if "train_accuracy" in r}

    kw = dict(max_steps=6, logging_steps=2, save_strategy="steps", save_steps=3)  # checkpoint-3 between two logs
    full = make_trainer(make_args(tmp_path / "full", **kw), splits)
    full.train()
    expected = accuracies(full)
    assert sorted(expected) == [2, 4, 6]
    same = make_trainer(make_args(tmp_path / "same", **kw), splits, callbacks=[interrupt_after_step(5)])
    with pytest.raises(KeyboardInterrupt):
        same.train()  # step 5 is waiting for the log of step 6
    same.train(resume_from_checkpoint=True)  # checkpoint-3
    fresh = make_trainer(make_args(tmp_path / "fresh", **kw), splits, model=make_model(seed=5))
    fresh.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert accuracies(same) == expected
    assert accuracies(fresh) == expected


def test_evaluation_accuracy_and_grokking_callback(splits, tmp_path):
    args = make_args(tmp_path, "none", max_steps=10, eval_strategy="steps", eval_steps=2)
    callback = GrokkingCallback(target=1e-6, stop_on_target=True)
    trainer = make_trainer(
        args,
        splits,
        eval_dataset=splits["test"],
        compute_metrics=arithmetic_accuracy,
        preprocess_logits_for_metrics=preprocess_logits_for_accuracy,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.steps_to_target == 2 and trainer.state.global_step == 2
    assert callback.seconds_per_step is not None and callback.seconds_per_step > 0
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_hf_causal_lm_from_config(splits, tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=P + 2,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=16,
    )
    model = LlamaForCausalLM(config)
    trainer = make_trainer(make_args(tmp_path, max_steps=4), splits, model=model)
    trainer.train()
    assert trainer.num_outer_steps == 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.amplifier.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gradient_transform="fir"), "gradient_transform"),
        (dict(max_grad_norm=1.0), "max_grad_norm"),
        (dict(gradient_transform="normalize", max_grad_norm=1.0), "max_grad_norm"),
        (dict(outer_every=0), "outer_every"),
        (dict(amplifier_c=0.0), "amplifier_c"),
        (dict(amplifier_hidden_dims=[]), "amplifier_hidden_dims"),
        (dict(virtual_lr=-1.0), "virtual_lr"),
        (dict(outer_gradient="next_batch"), "outer_gradient"),
        (dict(amplifier_hidden_dims=[32.7]), "amplifier_hidden_dims"),  # was silently built 32 wide
        (dict(gradient_transform="grokfast_ema", grokfast_lamb=float("nan")), "grokfast_lamb"),
    ],
)
def test_config_rejects_bad_values(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()


def test_outer_step_every_step_under_warmup_uses_the_base_lr_at_the_first_step(splits, tmp_path, monkeypatch):
    """T=1 (the paper's setting for the hard task) with a warm-up from 0: the first real step has lr 0, so the virtual
    step falls back to the base learning rate, the reference's fixed choice; later steps use the step's own lr."""
    import hf_ext.neuralgrok.trainer as trainer_module

    seen = []
    real = trainer_module.amplifier_outer_step

    def spy(*args, **kwargs):
        seen.append(kwargs["virtual_lr"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "amplifier_outer_step", spy)
    args = make_args(tmp_path, max_steps=3, outer_every=1, warmup_steps=2, learning_rate=1e-2)
    trainer = make_trainer(args, splits)
    trainer.train()
    assert trainer.num_outer_steps == 3
    assert seen == pytest.approx([1e-2, 5e-3, 1e-2])  # lr of steps 1..3 under linear warm-up 2: 0, 0.5, 1 x base


def test_trainer_rejects_missing_outer_set_and_wrong_args(splits, tmp_path):
    with pytest.raises(ValueError, match="outer_dataset"):
        NeuralGrokTrainer(model=make_model(), args=make_args(tmp_path), train_dataset=splits["inner"])
    with pytest.raises(TypeError, match="NeuralGrokConfig"):
        from transformers import TrainingArguments

        NeuralGrokTrainer(model=make_model(), args=TrainingArguments(output_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_train_accuracy_counts_correct_rows_exactly_when_the_ratio_is_not_exact_in_float32(splits, tmp_path):
    """29 of 100 rows right counts 29: the count is taken as integers, not from the float32 ratio times the rows
    (float32(0.29) * 100 = 28.9999992, which `int()` turned into 28 and a logged `train_accuracy` of 0.28)."""

    class FirstRowsRight(torch.nn.Module):
        """Predicts the labelled answer on the first `k` rows and a wrong token on the others."""

        def __init__(self, k):
            super().__init__()
            self.k = k
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, labels=None, **kwargs):
            rows, length = input_ids.shape
            logits = torch.zeros(rows, length, P + 2) + 0 * self.w
            answer = labels[:, -1]
            logits[torch.arange(rows), -2, answer] = 1.0
            logits[torch.arange(self.k, rows), -2, (answer[self.k :] + 1) % (P + 2)] = 2.0
            return {"loss": self.w * 0, "logits": logits}

    gen = torch.Generator().manual_seed(0)
    labels = torch.full((100, 5), -100)
    labels[:, -1] = torch.randint(0, P, (100,), generator=gen)
    batch = {"input_ids": torch.randint(0, P, (100, 5), generator=gen), "labels": labels}
    trainer = make_trainer(make_args(tmp_path, transform="none"), splits)
    trainer.compute_loss(FirstRowsRight(29).train(), batch)
    assert (trainer._acc_correct, trainer._acc_rows) == (29, 100)


# the 2-rank run of ddp_neuralgrok.py (test_two_ranks_keep_amplifier_identical) is in test_scale_out.py: one launch
# runs every 2-rank check of NeuralGrok
