"""NeuralGrokTrainer's construction from NeuralGrokConfig (base Adam, meta-Adam, clip, Grokfast and normalize options,
amplifier seed), its outer-set sampling, GrokkingCallback's bookkeeping, the arithmetic data splits and the pickle-free
state files; expected values come from the documented rules, written out here."""

import time

import numpy as np
import pytest
import torch

from hf_ext.neuralgrok import (
    GradFilterOptimizer,
    GradNormOptimizer,
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    GrokkingCallback,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokOptimizer,
    NeuralGrokTrainer,
    arithmetic_vocab_size,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from hf_ext.neuralgrok.state import load_state, save_state

P = 11


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)


def _model():
    torch.manual_seed(0)
    return GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=P + 2, hidden_size=16, num_attention_heads=2))


def _args(tmp_path, transform="neuralgrok", **kw):
    base = dict(
        output_dir=str(tmp_path),
        gradient_transform=transform,
        max_steps=2,
        per_device_train_batch_size=8,
        amplifier_hidden_dims=[4, 4],
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
    )
    base.update(kw)
    return NeuralGrokConfig(**base)


def _trainer(args, splits):
    neural = args.gradient_transform == "neuralgrok"
    return NeuralGrokTrainer(
        model=_model(),
        args=args,
        train_dataset=splits["inner"] if neural else splits["train"],
        outer_dataset=splits["outer"] if neural else None,
    )


# ------------------------------------------------------------------------------- construction


def test_neuralgrok_optimizers_take_the_arguments(tmp_path, splits):
    """Base Adam: lr, betas, eps, coupled weight decay of the arguments; meta-Adam: meta_learning_rate,
    meta_weight_decay and the same betas; the post-transform clip is amplifier_clip_norm."""
    args = _args(
        tmp_path,
        learning_rate=2e-3,
        adam_beta1=0.8,
        adam_beta2=0.9,
        adam_epsilon=1e-6,
        weight_decay=0.05,
        meta_learning_rate=3e-4,
        meta_weight_decay=0.2,
        amplifier_clip_norm=0.7,
    )
    trainer = _trainer(args, splits)
    trainer.create_optimizer()
    opt = trainer.transform_optimizer
    assert isinstance(opt, NeuralGrokOptimizer) and opt.clip_norm == 0.7
    (group,) = opt.inner.param_groups
    assert type(opt.inner) is torch.optim.Adam
    assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (2e-3, (0.8, 0.9), 1e-6, 0.05)
    (meta,) = trainer.meta_optimizer.param_groups
    assert (meta["lr"], meta["weight_decay"], tuple(meta["betas"])) == (3e-4, 0.2, (0.8, 0.9))


def test_neuralgrok_clip_after_the_transform_bounds_the_update_gradient(tmp_path, splits):
    """amplifier_clip_norm=0.1: the gradient the base optimizer sees has global norm 0.1 (the amplifier makes every
    tensor norm c = 1, so the unclipped norm is sqrt(#tensors) > 0.1)."""
    args = _args(tmp_path, amplifier_clip_norm=0.1)
    trainer = _trainer(args, splits)
    trainer.create_optimizer()
    seen = []
    real_step = trainer.transform_optimizer.inner.step

    def spy(*a, **k):
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))))
        return real_step(*a, **k)

    trainer.transform_optimizer.inner.step = spy
    batch = trainer.data_collator([splits["inner"][i] for i in range(8)])
    trainer.model(**batch).loss.backward()
    trainer.transform_optimizer.step()
    assert seen == pytest.approx([0.1], rel=1e-5)


@pytest.mark.parametrize(
    "transform, kw, want",
    [
        ("grokfast_ema", dict(grokfast_alpha=0.9), dict(mode="ema", alpha=0.9, lamb=2.0)),
        ("grokfast_ma", dict(grokfast_window=7, grokfast_warmup=False), dict(mode="ma", window=7, warmup=False, lamb=5.0)),
        ("grokfast_ma", dict(grokfast_lamb=1.5), dict(mode="ma", window=100, warmup=True, lamb=1.5)),
    ],
)
def test_grokfast_filter_takes_the_arguments_and_documented_lamb_defaults(tmp_path, splits, transform, kw, want):
    """grokfast_lamb defaults to 2.0 for EMA and 5.0 for MA; alpha, window and warmup come from the arguments."""
    trainer = _trainer(_args(tmp_path, transform, **kw), splits)
    trainer.create_optimizer()
    opt = trainer.transform_optimizer
    assert isinstance(opt, GradFilterOptimizer)
    for key, value in want.items():
        assert getattr(opt, key) == value, key


def test_normalize_control_uses_amplifier_c_and_clip(tmp_path, splits):
    trainer = _trainer(_args(tmp_path, "normalize", amplifier_c=0.5, amplifier_clip_norm=2.0), splits)
    trainer.create_optimizer()
    opt = trainer.transform_optimizer
    assert isinstance(opt, GradNormOptimizer) and opt.c == 0.5 and opt.clip_norm == 2.0


def test_decoupled_weight_decay_uses_the_optim_argument(tmp_path, splits):
    """coupled_weight_decay=False: the base optimizer is the one --optim names (AdamW by default), not Adam."""
    trainer = _trainer(_args(tmp_path, "none", coupled_weight_decay=False, weight_decay=0.1), splits)
    trainer.create_optimizer()
    inner = trainer.transform_optimizer.inner
    assert type(inner) is torch.optim.AdamW


@pytest.mark.parametrize("seed", [3, 4])
def test_default_amplifier_is_initialised_from_the_seed_argument(tmp_path, splits, seed):
    """The default amplifier is `NeuralAmplifier(hidden_dims, c)` drawn under `torch.manual_seed(args.seed)`."""
    trainer = _trainer(_args(tmp_path, seed=seed, amplifier_c=2.0), splits)
    torch.manual_seed(seed)
    want = NeuralAmplifier((4, 4), c=2.0)
    for a, b in zip(trainer.amplifier.parameters(), want.parameters()):
        assert torch.equal(a.detach().cpu(), b.detach())
    assert trainer.amplifier.c == 2.0


# ------------------------------------------------------------------------------- Grokfast filters


def test_grokfast_ma_without_warmup_filters_from_the_first_step():
    """warmup=False: `g + lamb * mean(last <= window gradients)` from the first step on (the mean over the gradients
    stored so far, as in the reference `sum(grads) / len(grads)`), the window sliding after it is full."""
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = GradFilterOptimizer(torch.optim.SGD([p], lr=1.0), mode="ma", lamb=1.5, window=3, warmup=False)
    grads = [torch.tensor(v, dtype=torch.float64) for v in ([1.0, 0.0], [0.0, 2.0], [4.0, -1.0], [2.0, 2.0])]
    want = torch.zeros(2, dtype=torch.float64)
    for k, g in enumerate(grads):
        p.grad = g.clone()
        opt.step()
        window = grads[max(0, k - 2) : k + 1]
        want -= g + 1.5 * sum(window) / len(window)
        torch.testing.assert_close(p.detach(), want)


def test_grokfast_ema_uses_its_alpha_and_lamb():
    """mu_1 = g_1, mu_t = alpha mu + (1 - alpha) g_t, update gradient g_t + lamb mu_t, at alpha 0.6, lamb 0.5."""
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = GradFilterOptimizer(torch.optim.SGD([p], lr=1.0), mode="ema", alpha=0.6, lamb=0.5)
    g1, g2 = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([3.0, 0.5], dtype=torch.float64)
    p.grad = g1.clone()
    opt.step()
    p.grad = g2.clone()
    opt.step()
    mu2 = 0.6 * g1 + 0.4 * g2
    torch.testing.assert_close(p.detach(), -(g1 + 0.5 * g1) - (g2 + 0.5 * mu2))


# ---------------------------------------------------------------------------------- outer set


def _rows(batches):
    return {tuple(r.tolist()) for b in batches for r in b["input_ids"]}


def test_outer_max_samples_is_a_seeded_random_subset(tmp_path, splits):
    """outer_max_samples draws a fixed random sample of the outer set: its size, rows of the outer set, the same for the
    same seed, different for different seeds (not simply the first rows)."""
    outer = {tuple(r.tolist()) for r in splits["outer"][:]["input_ids"]}
    samples = {}
    for seed in (1, 2, 1):
        trainer = _trainer(_args(tmp_path, seed=seed, outer_max_samples=4, outer_batch_size=3), splits)
        batches = trainer._build_outer_batches()
        assert [len(b["input_ids"]) for b in batches] == [3, 1]
        rows = _rows(batches)
        assert len(rows) == 4 and rows <= outer
        if seed in samples:
            assert rows == samples[seed]
        samples[seed] = rows
    assert samples[1] != samples[2]
    # without the limit: every outer row, once
    trainer = _trainer(_args(tmp_path, outer_batch_size=5), splits)
    assert _rows(trainer._build_outer_batches()) == outer


# ------------------------------------------------------------------------------ GrokkingCallback


def test_grokking_callback_counts_reaching_the_target_exactly():
    from transformers import TrainerControl, TrainerState

    cb = GrokkingCallback(target=0.75)
    state = TrainerState()
    state.global_step = 12
    cb.on_evaluate(None, state, TrainerControl(), metrics={"eval_accuracy": 0.5})
    assert cb.steps_to_target is None
    state.global_step = 20
    cb.on_evaluate(None, state, TrainerControl(), metrics={"eval_accuracy": 0.75})
    state.global_step = 30
    cb.on_evaluate(None, state, TrainerControl(), metrics={"eval_accuracy": 1.0})
    assert cb.steps_to_target == 20


def test_grokking_callback_state_accumulates_elapsed_time_over_resumes():
    """`state()` stores the elapsed time so far (time before the resume included), so a second resume adds to it."""
    cb = GrokkingCallback()
    cb.load_state({"attributes": {"elapsed_offset": 10.0}})
    cb.on_train_begin(None, None, None)
    time.sleep(0.05)
    saved = cb.state()["attributes"]["elapsed_offset"]
    assert saved >= 10.04
    again = GrokkingCallback()
    again.load_state(cb.state())
    assert again.elapsed() >= saved


# ------------------------------------------------------------------------------------- data


def test_split_layout_sizes_and_seed_follow_the_docs():
    """p = 97, train 0.5, outer 0.02 of train: train 4656 = inner 4563 + outer 93, test 4656; the permutation is cut
    as [inner | outer | test], so `train` is `inner` followed by `outer`; another seed gives another split."""
    ds = build_arithmetic_dataset("a+b", 97)
    s = split_arithmetic_dataset(ds, 0.5, 0.02, seed=0)
    assert [len(s[k]) for k in ("train", "inner", "outer", "test")] == [4656, 4563, 93, 4656]
    train = s["train"][:]["input_ids"]
    assert torch.equal(train[:4563], s["inner"][:]["input_ids"])
    assert torch.equal(train[4563:], s["outer"][:]["input_ids"])
    other = split_arithmetic_dataset(ds, 0.5, 0.02, seed=1)
    assert not torch.equal(other["outer"][:]["input_ids"], s["outer"][:]["input_ids"])
    again = split_arithmetic_dataset(ds, 0.5, 0.02, seed=0)
    assert torch.equal(again["test"][:]["input_ids"], s["test"][:]["input_ids"])


@pytest.mark.parametrize("task", ["a+b", "a-b", "a*b", "a*a-b"])
def test_binary_task_rows_match_a_brute_force_table(task):
    """Every (a, b) with a in [0, p), b in [1, p) once, answer computed by hand, labels on the answer only."""
    p = 7
    ds = build_arithmetic_dataset(task, p)
    ops = {"a+b": lambda a, b: a + b, "a-b": lambda a, b: a - b, "a*b": lambda a, b: a * b}
    got = {}
    for ids, labels in zip(ds[:]["input_ids"].tolist(), ds[:]["labels"].tolist()):
        a, b = ids[0], ids[-3]
        got[(a, b)] = ids[-1]
        assert labels[:-1] == [-100] * (len(ids) - 1) and labels[-1] == ids[-1]
        assert ids[-2] == p
    assert set(got) == {(a, b) for a in range(p) for b in range(1, p)}
    for (a, b), r in got.items():
        want = (a * a - b) % p if task == "a*a-b" else ops[task](a, b) % p
        assert r == want
    assert arithmetic_vocab_size(task, p) == p + 1 + (2 if task == "a*a-b" else 1)


def test_five_operand_task_ranges():
    """a*c+b*d-e: a, b, e in [0, p), c, d in [1, p); p^3 (p-1)^2 rows; vocab p + 4."""
    p = 3
    ds = build_arithmetic_dataset("a*c+b*d-e", p)
    rows = ds[:]["input_ids"].numpy()
    assert len(rows) == p**3 * (p - 1) ** 2
    a, b, c, d, e = rows[:, 0], rows[:, 2], rows[:, 4], rows[:, 6], rows[:, 8]
    assert c.min() == 1 and d.min() == 1 and a.min() == 0 and e.min() == 0
    assert np.array_equal(rows[:, -1], (a * c + b * d - e) % p)
    assert arithmetic_vocab_size("a*c+b*d-e", p) == p + 4


@pytest.mark.parametrize("p", [9, 25, 49])
def test_composite_squares_are_refused_as_modulus(p):
    with pytest.raises(ValueError, match="prime"):
        build_arithmetic_dataset("a+b", p)


# ------------------------------------------------------------------------------------- state files


def test_state_files_round_trip_types_keys_and_dtypes(tmp_path):
    """Nested optimizer-like state: int keys stay ints, tuples stay tuples, each tensor of a list keeps its own
    values, float64 / int64 / bfloat16 keep their dtype."""
    obj = {
        "state": {0: {"step": torch.tensor(5, dtype=torch.int64), "m": torch.randn(3, dtype=torch.float64)}},
        "param_groups": [{"betas": (0.9, 0.98), "params": [0]}],
        "queue": [torch.full((2,), 1.0), torch.full((2,), 2.0), torch.full((2,), 3.0, dtype=torch.bfloat16)],
    }
    save_state(obj, str(tmp_path / "s"))
    back = load_state(str(tmp_path / "s"))
    assert list(back["state"]) == [0]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["state"][0]["step"].dtype == torch.int64 and int(back["state"][0]["step"]) == 5
    assert back["state"][0]["m"].dtype == torch.float64 and torch.equal(back["state"][0]["m"], obj["state"][0]["m"])
    assert [float(t[0]) for t in back["queue"]] == [1.0, 2.0, 3.0]
    assert back["queue"][2].dtype == torch.bfloat16


def test_adam_state_saved_as_files_resumes_identically(tmp_path):
    """An Adam state dict written with save_state and loaded back continues exactly like the original."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    opt = torch.optim.Adam([w], lr=0.1)

    def step(o, p, k):
        o.zero_grad()
        (p * (k + 1)).pow(2).sum().backward()
        o.step()

    step(opt, w, 0)
    save_state(opt.state_dict(), str(tmp_path / "opt"))
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = torch.optim.Adam([w2], lr=0.1)
    opt2.load_state_dict(load_state(str(tmp_path / "opt")))
    for k in (1, 2):
        step(opt, w, k)
        step(opt2, w2, k)
    assert torch.equal(w, w2)
