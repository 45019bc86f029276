"""Bad inputs refused by name at construction (audit 2026-12-04): target token ids outside the model's vocabulary, a
source domain without a labelled token, invalid weights given to the building blocks, initial weights for `uniform`,
and bool / string weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_ext.grape import GrapeConfig, GrapeTrainer, MixtureSampler, MixtureState, StreamingMixture, load_mixture


def _args(out, **overrides) -> GrapeConfig:
    kw = dict(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        reweight_domains_every=2,
        reweight_tasks_every=2,
        reweight_batch_size=4,
        reweight_mini_batch_size=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    kw.update(overrides)
    return GrapeConfig(**kw)


# ---- 3: target token ids beyond the model's vocabulary --------------------------------------------------------------
def test_target_token_ids_beyond_the_vocabulary_are_refused_naming_the_task(synthetic, grape_helpers, tmp_path):
    """Was: constructed without complaint, trained `reweight_tasks_every` steps, then a bare `IndexError: index out
    of range in self` at the first task update (on CUDA a device-side assert)."""
    train, targets = synthetic
    vocab = grape_helpers["VOCAB"]
    bad = Dataset.from_dict({"input_ids": [[5, 7, vocab + 100, 3]] * 8})
    with pytest.raises(ValueError, match=rf"target_datasets\['qa'\] has the token id {vocab + 100} in its input_ids.*"
                       rf"vocabulary has {vocab} tokens"):  # fmt: skip
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path),
            train_dataset=train,
            target_datasets={"t_a": targets["t_a"], "qa": bad},
        )
    labels = Dataset.from_dict({"input_ids": [[5, 7, 9, 3]] * 8, "labels": [[-100, 7, vocab, 3]] * 8})
    with pytest.raises(ValueError, match=rf"target_datasets\['qa'\] has the token id {vocab} in its labels"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path),
            train_dataset=train,
            target_datasets={"t_a": targets["t_a"], "qa": labels},
        )
    # ids up to vocab - 1 (and -100 labels) are fine
    ok = Dataset.from_dict({"input_ids": [[5, 7, vocab - 1, 3]] * 8, "labels": [[-100, 7, vocab - 1, 3]] * 8})
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=_args(tmp_path),
        train_dataset=train,
        target_datasets={"t_a": targets["t_a"], "qa": ok},
    )


# ---- 4: a source domain without any labelled token ------------------------------------------------------------------
def test_a_source_domain_without_a_labelled_token_is_refused_naming_it(synthetic, grape_helpers, tmp_path):
    """Was: accepted; at each update its minibatch loss was NaN and its gradient zero, GRAPE scored it 0 and kept
    sampling it (weight 0.31 after 2 updates), logging a NaN loss and EMA."""
    train, targets = synthetic
    ids, domains = train["input_ids"], train["domain"]

    def with_labels(unlabelled):
        labels = [[-100] * len(r) if unlabelled(i, d) else r for i, (r, d) in enumerate(zip(ids, domains))]
        return Dataset.from_dict({"input_ids": ids, "labels": labels, "domain": domains})

    with pytest.raises(ValueError, match=r"source domains \['c'\] have no labelled token"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path),
            train_dataset=with_labels(lambda i, d: d == "c"),
            target_datasets=targets,
        )
    # a domain with some labelled rows (e.g. prompt-only rows among others) is accepted
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=_args(tmp_path),
        train_dataset=with_labels(lambda i, d: d == "c" and i % 2 == 0),
        target_datasets=targets,
    )


# ---- 5: the building blocks validate weights ------------------------------------------------------------------------
NAMES = ["a", "b", "c"]
BAD = "must hold finite non-negative weights with a positive sum"
ROWS = [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]


@pytest.mark.parametrize(
    "weights, match",
    [
        ([float("nan"), 0.5, 0.5], BAD),  # drew a 3000/3000 times
        ([-0.5, 1.0, 0.5], BAD),  # never drew a
        ([0.0, 0.0, 0.0], BAD),  # drew a 3000/3000 times
        ([float("inf"), 1.0, 1.0], BAD),
        ([0.5, 0.5], r"has shape \(2,\) but there are 3 names"),
        ([True, False, True], "must hold numbers \\(not bools or strings\\)"),
        (["0.5", 0.2, 0.3], "must hold numbers \\(not bools or strings\\)"),
        (torch.tensor([True, False, True]), "must hold real numbers"),
    ],
)
def test_mixture_state_refuses_bad_domain_weights(weights, match):
    with pytest.raises(ValueError, match=r"domain_weights \(domains \['a', 'b', 'c'\]\) " + match):
        MixtureState(NAMES, [], weights, torch.zeros(0))


def test_mixture_state_accepts_unnormalised_weights_and_no_tasks():
    state = MixtureState(NAMES, [], [2, 6, 2], [])
    assert state.domain_weights.tolist() == [2.0, 6.0, 2.0] and state.task_weights.shape == (0,)
    with pytest.raises(ValueError, match=r"task_weights \(tasks \['t'\]\) must hold finite"):
        MixtureState(NAMES, ["t"], [1, 1, 1], [float("nan")])


def test_set_domain_weights_refuses_bad_weights_and_keeps_the_state():
    """Was: `set_domain_weights([nan, 1, 0])` was recorded, the sampler drew domain a only and the NaN was exported."""
    state = MixtureState(NAMES, ["t1", "t2"], [1 / 3] * 3, [0.5, 0.5])
    for bad in ([float("nan"), 1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5]):
        with pytest.raises(ValueError, match=r"set_domain_weights: weights \(domains \['a', 'b', 'c'\]\)"):
            state.set_domain_weights(torch.tensor(bad), 10)
    with pytest.raises(ValueError, match=r"set_task_weights: weights \(tasks \['t1', 't2'\]\)"):
        state.set_task_weights(torch.tensor([float("nan"), 1.0]))
    assert state.domain_updates == 0 and state.task_updates == 0 and len(state.schedule) == 1
    assert state.to_mixture_dict("grape")["domains"] == pytest.approx(dict.fromkeys(NAMES, 1 / 3))


def test_sampler_refuses_a_schedule_with_bad_weights():
    """A schedule edited by hand (or a state object built without validation) is refused by the sampler, at
    construction and when its cached CDFs are rebuilt, instead of drawing a wrong stream."""
    state = MixtureState(NAMES, [], [1 / 3] * 3, [])
    state.schedule = [(0, torch.tensor([float("nan"), 0.5, 0.5], dtype=torch.float64))]
    with pytest.raises(ValueError, match=r"schedule entry 0 \(from sampler position 0\) must hold finite"):
        MixtureSampler(ROWS, state, num_samples=30)
    state = MixtureState(NAMES, [], [1 / 3] * 3, [])
    sampler = MixtureSampler(ROWS, state, num_samples=30)
    assert len(list(sampler)) == 30
    state.schedule.append((10, torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"schedule entry 1 \(from sampler position 10\) must hold finite"):
        list(sampler)
    state = MixtureState(NAMES, [], [1 / 3] * 3, [])
    state.domain_weights = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="the mixture state's domain_weights must hold finite"):
        StreamingMixture({n: [{"input_ids": [1, 2]}] for n in NAMES}, state)


def test_valid_weights_draw_as_before():
    state = MixtureState(NAMES, [], [0.0, 1.0, 3.0], [])  # a zero weight is allowed: the domain is never drawn
    counts = np.bincount(np.fromiter(iter(MixtureSampler(ROWS, state, num_samples=4000)), np.int64) // 10, minlength=3)
    assert counts[0] == 0 and 0.2 < counts[1] / 4000 < 0.3


# ---- 6: uniform with initial weights; bool / string weights ---------------------------------------------------------
def test_uniform_refuses_initial_weights_pointing_to_fixed(synthetic, grape_helpers, tmp_path):
    """Was: trained on the given weights and exported them as method 'uniform' ({a: 0.9, b: 0.05, c: 0.05})."""
    train, _ = synthetic
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"a": 0.9, "b": 0.05, "c": 0.05}))
    with pytest.raises(ValueError, match=r"reweight_method='uniform'.*--mixture_file.*reweight_method='fixed'"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path / "u", reweight_method="uniform", mixture_file=str(path)),
            train_dataset=train,
        )
    with pytest.raises(ValueError, match=r"reweight_method='uniform'.*domain_weights.*reweight_method='fixed'"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path / "u", reweight_method="uniform"),
            train_dataset=train,
            domain_weights={"a": 0.9, "b": 0.05, "c": 0.05},
        )
    t = GrapeTrainer(  # the same weights with fixed
        model=grape_helpers["tiny_llama"](),
        args=_args(tmp_path / "f", reweight_method="fixed", mixture_file=str(path)),
        train_dataset=train,
    )
    assert t.mixture_state.domain_weights.tolist() == pytest.approx([0.9, 0.05, 0.05])


@pytest.mark.parametrize(
    "weights, culprit",
    [
        ({"a": True, "b": False, "c": 0.5}, "'a' is True"),  # was read as {a: .667, b: 0, c: .333}
        ({"a": 0.2, "b": 0.3, "c": "0.5"}, "'c' is '0.5'"),
        ({"a": 0.2, "b": None, "c": 0.5}, "'b' is None"),
    ],
)
def test_bool_and_string_weights_are_refused(weights, culprit, synthetic, grape_helpers, tmp_path):
    train, _ = synthetic
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(weights))
    with pytest.raises(ValueError, match=f"has a non-numeric weight: domain {culprit}"):
        load_mixture(str(path))
    with pytest.raises(ValueError, match=f"domain_weights must map each name to a number.*{culprit}"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path / "f", reweight_method="fixed"),
            train_dataset=train,
            domain_weights=weights,
        )


def test_numpy_and_torch_numbers_are_weights(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"a": 1, "b": 3}))
    assert load_mixture(str(path)) == {"a": 0.25, "b": 0.75}
    w = GrapeTrainer._weights_from({"a": np.float32(1.0), "b": torch.tensor(3.0)}, ["a", "b"], "domain_weights")
    assert w.tolist() == [0.25, 0.75]


def test_the_labelled_row_checks_read_a_boolean_attention_mask(synthetic, grape_helpers, tmp_path):
    """A True / False `attention_mask` made the labelled-row check of a tokenized target fail with pyarrow's
    ArrowNotImplementedError (no bool == int kernel); the check is shared with the source-domain check."""
    train, targets = synthetic
    ids = targets["t_a"]["input_ids"]
    ok = Dataset.from_dict({"input_ids": ids, "attention_mask": [[True] * (len(r) - 2) + [False] * 2 for r in ids]})
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=_args(tmp_path),
        train_dataset=train,
        target_datasets={"t_a": ok, "t_b": targets["t_b"]},
    )
    masked = Dataset.from_dict({"input_ids": ids, "attention_mask": [[True] + [False] * (len(r) - 1) for r in ids]})
    with pytest.raises(ValueError, match=r"target_datasets\['t_a'\] has 24 of 24 rows without a labelled next token"):
        GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=_args(tmp_path),
            train_dataset=train,
            target_datasets={"t_a": masked, "t_b": targets["t_b"]},
        )
