"""Update rules, sampler, data helpers, config validation and the trainer's use of its settings, pinned against
independent float64 hand computations, brute-force counts and the documented defaults (docs/grape.md)."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from grape_synthetic import quick_grape_args as _args

from hf_ext.grape import (
    GrapeConfig,
    GrapeTrainer,
    MixtureSampler,
    MixtureState,
    StreamingMixture,
    doge_domain_weights,
    doremi_domain_weights,
    doremi_excess_loss,
    exponentiated_step,
    resolve_step_size,
    smooth_weights,
    task_objective,
)
from hf_ext.grape.data import domain_rows, pad_target_features, prepare_target


def _softmax(logits):
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    return [x / sum(e) for x in e]


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


# ---- rules ---------------------------------------------------------------------------------------------------------
def test_smoothing_normalises_and_spreads_over_every_weight():
    """`smooth_weights` normalises its input and mixes with the uniform distribution over all K weights."""
    out = smooth_weights([2.0, 0.0, 2.0, 0.0], 0.2)  # -> [0.5, 0, 0.5, 0] mixed with 1/4
    torch.testing.assert_close(out, _f64([0.8 * 0.5 + 0.05, 0.05, 0.8 * 0.5 + 0.05, 0.05]), rtol=0, atol=1e-15)


def test_exponentiated_step_with_smoothing_on_three_weights():
    w, s, step, eps = [0.2, 0.3, 0.5], [1.0, -0.5, 0.25], 0.7, 0.3
    base = _softmax([math.log(a) + step * b for a, b in zip(w, s)])
    expected = [(1 - eps) * b + eps / 3 for b in base]
    torch.testing.assert_close(exponentiated_step(w, s, step, eps), _f64(expected), rtol=0, atol=1e-15)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_and_steps_are_refused(bad):
    with pytest.raises(ValueError, match="finite"):
        exponentiated_step([0.5, 0.5], [bad, 0.0], 1.0)
    with pytest.raises(ValueError, match="step_size"):
        exponentiated_step([0.5, 0.5], [1.0, 0.0], bad)
    with pytest.raises(ValueError, match="mu"):
        resolve_step_size(bad, "absolute")


def test_lr_scaled_step_refuses_a_negative_learning_rate():
    with pytest.raises(ValueError, match="learning_rate"):
        resolve_step_size(1.0, "lr_scaled", learning_rate=-1e-3)


def test_grape_ema_objective_refuses_a_zero_running_loss():
    with pytest.raises(ValueError, match="ema_loss"):
        task_objective(torch.tensor(2.0), "grape_ema", ema_loss=0.0)


def test_doge_clip_floor_is_in_units_of_the_learning_rate():
    """A negative `score_min` clips from below at `lr * score_min` (not at `score_min`)."""
    lr, mu = 1e-2, 0.01
    out = doge_domain_weights([0.5, 0.5], [-100.0, 0.0], [1.0, 1.0], lr, mu=mu, score_min=-2.0, score_max=5.0)
    # raw score -1.0 is clipped to lr * -2 = -0.02; log-ratio moves by -0.02 / mu = -2
    expected = _softmax([math.log(0.5) + (-2.0 * lr) / mu, math.log(0.5)])
    torch.testing.assert_close(out, _f64(expected), rtol=0, atol=1e-12)


def test_doge_refuses_inconsistent_arguments():
    with pytest.raises(ValueError, match="score_min"):
        doge_domain_weights([0.5, 0.5], [1.0, 0.0], [1.0, 1.0], 1e-3, score_min=2.0, score_max=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        doge_domain_weights([0.5, 0.5], [1.0, 0.0], [1.0, 1.0], -1e-3)
    with pytest.raises(ValueError, match="mu"):
        doge_domain_weights([0.5, 0.5], [1.0, 0.0], [1.0, 1.0], 1e-3, mu=0.0)


def test_excess_loss_of_a_fully_masked_batch_is_zero():
    out = doremi_excess_loss([[3.0, 1.0]], [[1.0, 0.0]], mask=[[0, 0]])
    assert float(out) == 0.0


def test_doremi_step_default_eta_is_one():
    base = _softmax([math.log(0.5) + 1.0 * 0.7, math.log(0.5)])
    expected = [(1 - 1e-4) * b + 1e-4 / 2 for b in base]
    torch.testing.assert_close(doremi_domain_weights([0.5, 0.5], [0.7, 0.0]), _f64(expected), rtol=0, atol=1e-15)


# ---- sampler -------------------------------------------------------------------------------------------------------
def test_sampler_refuses_zero_samples_per_epoch():
    state = MixtureState(["a", "b"], [], torch.tensor([0.5, 0.5]), torch.zeros(0))
    with pytest.raises(ValueError, match="num_samples"):
        MixtureSampler([[0], [1]], state, num_samples=0)


def test_unnormalised_state_weights_are_drawn_as_proportions():
    """Weights in a hand-built state that do not sum to 1 are read as proportions by both samplers."""
    state = MixtureState(["a", "b", "c"], [], torch.tensor([2.0, 6.0, 2.0]), torch.zeros(0))
    rows = list(MixtureSampler([[0], [1], [2]], state, num_samples=20000, seed=0))
    np.testing.assert_allclose(np.bincount(rows, minlength=3) / 20000, [0.2, 0.6, 0.2], atol=0.015)
    streams = {n: Dataset.from_dict({"x": list(range(10))}).to_iterable_dataset() for n in "abc"}
    it = iter(StreamingMixture(streams, state, seed=0, domain_column="domain"))
    counts = collections.Counter(next(it)["domain"] for _ in range(1500))
    np.testing.assert_allclose([counts[d] / 1500 for d in "abc"], [0.2, 0.6, 0.2], atol=0.05)


def test_streaming_interleaving_is_reseeded_after_a_weight_change():
    """A rebuild of the interleaving (here with unchanged weights) draws a fresh domain sequence, not a replay of
    the first one: the seed is offset by the number of weight changes."""
    state = MixtureState(["a", "b"], [], torch.tensor([0.5, 0.5]), torch.zeros(0))
    streams = {n: Dataset.from_dict({"x": list(range(10))}).to_iterable_dataset() for n in "ab"}
    it = iter(StreamingMixture(streams, state, seed=0, domain_column="domain"))
    first = [next(it)["domain"] for _ in range(60)]
    state.set_domain_weights(torch.tensor([0.5, 0.5]), 0)
    second = [next(it)["domain"] for _ in range(60)]
    # two independent fair sequences of 60 draws agree everywhere with probability 2**-60
    assert first != second


# ---- data ----------------------------------------------------------------------------------------------------------
def test_domain_rows_are_sorted_by_name_whatever_the_row_order():
    ds = Dataset.from_dict({"domain": ["c", "a", "b", "a", "c"], "input_ids": [[1]] * 5})
    names, rows = domain_rows(ds, "domain")
    assert names == ["a", "b", "c"]
    assert rows == [[1, 3], [2], [0, 4]]


def test_target_padding_keeps_the_rows_own_mask_and_labels():
    batch = pad_target_features(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 0], "labels": [-100, 6, 7]},
            {"input_ids": [8, 9]},
        ],
        pad_token_id=3,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, -100], [8, 9, -100]]


def test_prepare_target_refuses_empty_and_mismatched_rows():
    with pytest.raises(ValueError, match="no rows"):
        prepare_target("t", Dataset.from_dict({"input_ids": []}), None, 8)
    bad_mask = Dataset.from_dict({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1]]})
    with pytest.raises(ValueError, match="attention_mask length"):
        prepare_target("t", bad_mask, None, 8)


@pytest.mark.parametrize("mask_type", [int, bool])
def test_prepare_target_reads_a_boolean_attention_mask_as_its_1_0_form(mask_type):
    """audit rv13: tokenized target rows with a True / False attention_mask crashed the labelled-rows check
    (ArrowNotImplementedError: pyarrow has no bool == int comparison); the same rows with 1 / 0 were accepted."""
    ids = [[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]]
    mask = [[mask_type(1)] * 4 + [mask_type(0)] * 2, [mask_type(1)] * 6]
    out = prepare_target("qa", Dataset.from_dict({"input_ids": ids, "attention_mask": mask}), None, 8)
    assert out["labels"] == [[5, 6, 7, 8, -100, -100], [9, 10, 11, 12, 13, 14]]
    masked = [[mask_type(1)] * 3, [mask_type(1)] + [mask_type(0)] * 2]  # row 1: nothing real after the first token
    with pytest.raises(ValueError, match=r"target_datasets\['qa'\] has 1 of 2 rows without a labelled next token "
                       r"\(the first at row 1\)"):  # fmt: skip
        prepare_target("qa", Dataset.from_dict({"input_ids": [[5, 6, 7]] * 2, "attention_mask": masked}), None, 8)


def test_pack_by_domain_refuses_a_domain_too_short_for_one_block(small_tokenizer):
    from hf_ext.grape.data import pack_by_domain

    ds = Dataset.from_dict({"text": ["hello world " * 50, "hi"], "domain": ["long", "short"]})
    with pytest.raises(ValueError, match="'short'"):
        pack_by_domain(ds, small_tokenizer, block_size=16)


# ---- config --------------------------------------------------------------------------------------------------------
def _config(tmp_path, **kw):
    return GrapeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def test_config_defaults_match_the_documented_grape_settings(tmp_path):
    c = _config(tmp_path)
    assert (c.domain_step_size, c.task_step_size) == (1.5, 5.0)
    assert (c.task_smoothing, c.domain_smoothing, c.ema_beta) == (1e-3, 0.0, 0.9)
    assert (c.reweight_batch_size, c.reweight_mini_batch_size) == (16, 8)
    assert (c.reweight_domains_every, c.reweight_tasks_every) == (100, 100)
    assert (c.doremi_eta, c.doremi_smoothing) == (1.0, 1e-4)
    assert c.step_size_convention == "absolute" and c.reweight_method == "grape"


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"task_smoothing": -0.1}, "task_smoothing"),
        ({"domain_smoothing": -1e-3}, "domain_smoothing"),
        ({"domain_step_size": float("inf")}, "domain_step_size"),
        ({"task_step_size": float("nan")}, "task_step_size"),
        ({"step_size_convention": "lr_scaled", "task_step_size": 0.0}, "task_step_size"),
        ({"mixture_key": "best"}, "mixture_key"),
        ({"samples_per_epoch": 0}, "samples_per_epoch"),
        ({"block_size": 0}, "block_size"),
        ({"reweight_batch_size": 0}, "reweight_batch_size"),
        ({"reweight_domains_every": -1}, "reweight_domains_every"),
        ({"reweight_tasks_every": -5}, "reweight_tasks_every"),
    ],
)
def test_config_refuses_out_of_range_values(tmp_path, kw, field):
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **kw)


# ---- trainer -------------------------------------------------------------------------------------------------------
def _trainer(synthetic, grape_helpers, tmp_path, **kw):
    train, targets = synthetic
    weights = kw.pop("domain_weights", {"a": 0.6, "b": 0.3, "c": 0.1})
    return GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3),
        args=_args(tmp_path, **kw),
        train_dataset=train,
        target_datasets=targets,
        domain_weights=weights,
    )


def _rows_by_domain(train) -> dict[tuple, str]:
    return {tuple(r["input_ids"]): r["domain"] for r in train}


def test_reweighting_minibatches_are_drawn_from_the_given_mixture(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    trainer = _trainer(synthetic, grape_helpers, tmp_path)
    owner = _rows_by_domain(train)
    rng = np.random.default_rng(0)
    batch = trainer._mixture_batch(torch.tensor([0.0, 1.0, 0.0]), rng, 8, "domain")
    assert {owner[tuple(r)] for r in batch["input_ids"].tolist()} == {"b"}
    task_rows = {tuple(r["input_ids"]) for r in targets["t_b"]}
    batch = trainer._mixture_batch(torch.tensor([0.0, 1.0]), rng, 6, "task")
    assert all(tuple(r[: len(next(iter(task_rows)))]) in task_rows for r in batch["input_ids"].tolist())


def test_configured_smoothing_is_applied_to_both_updates(synthetic, grape_helpers, tmp_path):
    """Task and domain steps use `task_smoothing` / `domain_smoothing`, recomputed from the recorded scores."""
    trainer = _trainer(synthetic, grape_helpers, tmp_path, task_smoothing=0.2, domain_smoothing=0.3)
    st, args = trainer.mixture_state, trainer.args
    z0, a0 = st.task_weights.clone(), st.domain_weights.clone()
    trainer._task_step({})
    dots = trainer.last_mean_stats["task"][:2].tolist()
    base = _softmax([math.log(z) - args.task_step_size * d for z, d in zip(z0.tolist(), dots)])
    torch.testing.assert_close(st.task_weights, _f64([0.8 * b + 0.1 for b in base]), rtol=0, atol=1e-12)
    trainer._domain_step({})
    dots = trainer.last_mean_stats["domain"][:3].tolist()
    base = _softmax([math.log(a) + args.domain_step_size * d for a, d in zip(a0.tolist(), dots)])
    torch.testing.assert_close(st.domain_weights, _f64([0.7 * b + 0.1 for b in base]), rtol=0, atol=1e-12)


def test_lr_scaled_steps_use_the_scheduled_learning_rate(synthetic, grape_helpers, tmp_path):
    """With `step_size_convention='lr_scaled'` both steps are `current_lr / mu`, the lr read from the scheduler."""
    trainer = _trainer(
        synthetic, grape_helpers, tmp_path, step_size_convention="lr_scaled", learning_rate=1e-2,
        lr_scheduler_type="linear", task_step_size=2e-3, domain_step_size=4e-3, task_smoothing=0.0,
    )  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    lr = 1e-2 * 5 / 10  # linear decay, no warmup, halfway
    st = trainer.mixture_state
    z0, a0 = st.task_weights.clone(), st.domain_weights.clone()
    trainer._task_step({})
    dots = trainer.last_mean_stats["task"][:2].tolist()
    expected = _softmax([math.log(z) - lr / 2e-3 * d for z, d in zip(z0.tolist(), dots)])
    torch.testing.assert_close(st.task_weights, _f64(expected), rtol=0, atol=1e-12)
    trainer._domain_step({})
    dots = trainer.last_mean_stats["domain"][:3].tolist()
    expected = _softmax([math.log(a) + lr / 4e-3 * d for a, d in zip(a0.tolist(), dots)])
    torch.testing.assert_close(st.domain_weights, _f64(expected), rtol=0, atol=1e-12)
    assert float((st.domain_weights - a0).abs().max()) > 1e-4


def _clipped_grad(model, batch, log: bool, max_norm: float) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**batch).loss
    grads = torch.autograd.grad(torch.log(loss) if log else loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    return flat.detach().double() * min(1.0, max_norm / (float(flat.norm()) + 1e-6))


def test_grape_ema_domain_step_aims_at_the_log_loss_target_gradient(synthetic, grape_helpers, tmp_path):
    """grape_ema's domain step uses the gradient of the z-weighted *log* target losses, like grape."""
    trainer = _trainer(synthetic, grape_helpers, tmp_path, reweight_method="grape_ema")
    st, args, model = trainer.mixture_state, trainer.args, trainer.model
    rng = trainer._rng("target")
    assert (args.per_device_train_batch_size, args.reweight_batch_size, args.reweight_mini_batch_size) == (4, 4, 2)
    g_tgt = torch.stack(  # 4 // 2 gradients, each over a per-device train batch (4 sequences), as the GRAPE code
        [_clipped_grad(model, trainer._mixture_batch(st.task_weights, rng, 4, "task"), True, 1.0) for _ in range(2)]
    ).mean(0)
    rng = trainer._rng("domain")
    dots = [float(_clipped_grad(model, trainer._domain_batch(k, rng, 2), False, 1.0) @ g_tgt) for k in range(3)]
    expected = _softmax([math.log(a) + args.domain_step_size * d for a, d in zip(st.domain_weights.tolist(), dots)])
    trainer._domain_step({})
    torch.testing.assert_close(st.domain_weights, _f64(expected), rtol=1e-5, atol=1e-7)


def _empty_stream_child(conn) -> None:
    """In the forked child: each kind of empty domain stream's outcome over 200 draws, sent as lines to `conn`."""
    import traceback

    from hf_ext.grape import MixtureState, StreamingMixture

    try:
        empties = {
            "list": lambda: [],
            # a domain whose every row a filter removed: an iterable dataset that yields nothing
            "filtered_iterable_dataset": lambda: (
                Dataset.from_dict({"x": [1, 2, 3]}).to_iterable_dataset().filter(lambda row: False)
            ),
        }
        lines = []
        for kind, empty in empties.items():
            state = MixtureState(["a", "b"], [], torch.tensor([0.5, 0.5]), torch.zeros(0))
            streams = {"a": Dataset.from_dict({"x": [1, 2]}).to_iterable_dataset(), "b": empty()}
            it = iter(StreamingMixture(streams, state, seed=0))
            try:
                for _ in range(200):  # P(no draw of 'b' in 200 fair draws) = 2**-200
                    next(it)
                lines.append(f"{kind} no error")
            except ValueError as err:
                lines.append(f"{kind} ValueError: {err}")
        conn.send(lines)
    except BaseException:
        conn.send(["child failed: " + traceback.format_exc()])


def test_streaming_mixture_refuses_an_empty_domain_stream():
    """An empty domain stream (a list, or a dataset a filter emptied) is refused by name at the first draw of that
    domain; without the check the interleaving restarts the empty stream forever and the training hangs at 100% CPU
    with no error. Run in a forked child process with a timeout (a fork, not a new interpreter: it needs none of the
    ~10 s of imports): the regression loops in a `datasets` worker thread that nothing can stop, and a hung process is
    a failure here, killed, not a stuck test session."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_empty_stream_child, args=(send,), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(120):
            pytest.fail("StreamingMixture with an empty domain stream did not raise within 120 s (it hangs).")
        lines = receive.recv()
    finally:
        child.kill()
        child.join()
    assert lines == [
        f"{kind} ValueError: the stream of domain 'b' is empty." for kind in ("list", "filtered_iterable_dataset")
    ]
