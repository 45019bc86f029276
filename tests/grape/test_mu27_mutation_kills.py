"""Mutation kills of audit pass mu27 (GRAPE streaming schedule by position and reweighting-stream records): tests of
behaviour the gr27 tests left open, each failing on a small mutant of the library that a user would notice."""

import collections
import json
import logging

import pytest
import torch
from grape_synthetic import oom_once_trainer, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeConfig, MixtureState, StreamingMixture


def _mixture(weights, n=2, size=50):
    from datasets import Dataset

    names = "ab"[:n]
    streams = {
        d: Dataset.from_dict({"x": list(range(i * 1000, i * 1000 + size))}).to_iterable_dataset()
        for i, d in enumerate(names)
    }
    state = MixtureState(list(names), ["t"], torch.tensor(weights, dtype=torch.float32), torch.tensor([1.0]))
    return StreamingMixture(streams, state, seed=0, domain_column="domain"), state


def test_a_weight_update_applies_from_the_very_next_example_drawn():
    """An update recorded at `examples_drawn` (as GrapeTrainer records it) draws that position with the new weights:
    with one-hot weights, the example right after the update comes from the new domain (one example late otherwise)."""
    mix, state = _mixture([1.0, 0.0])
    it = iter(mix)
    first = [next(it)["domain"] for _ in range(3)]
    state.set_domain_weights(torch.tensor([0.0, 1.0]), mix.examples_drawn)
    after = [next(it)["domain"] for _ in range(3)]
    assert first == ["a"] * 3 and after == ["b"] * 3


def test_a_new_pass_replays_the_schedule_from_its_first_example():
    """Each `__iter__` is a pass from position 0 (a resume re-reads the skipped examples, an `auto_find_batch_size`
    retry iterates again): it follows the schedule from its first entry and draws what the first pass drew."""
    mix, state = _mixture([1.0, 0.0])
    it = iter(mix)
    first = []
    for w in ([0.0, 1.0], [1.0, 0.0], [0.0, 1.0]):
        first += [next(it) for _ in range(2)]
        state.set_domain_weights(torch.tensor(w), mix.examples_drawn)
    first += [next(it) for _ in range(2)]
    assert [e["domain"] for e in first] == list("aabbaabb")
    it = iter(mix)
    again = [next(it) for _ in range(8)]
    assert [e["domain"] for e in again] == list("aabbaabb") and mix.examples_drawn == 8


def test_frequent_updates_with_the_same_weights_keep_the_mixture_random():
    """An update at every example (reweighting every step of a tiny batch) rebuilds the interleaving at each one; each
    schedule entry draws with its own seed, so the domains still follow the weights (with one seed for all entries,
    every rebuilt interleaving drew the same first domain)."""
    mix, state = _mixture([0.5, 0.5], size=200)
    it = iter(mix)
    domains = []
    for _ in range(80):
        state.set_domain_weights(torch.tensor([0.5, 0.5]), mix.examples_drawn)
        domains.append(next(it)["domain"])
    counts = collections.Counter(domains)
    assert 20 <= counts["a"] <= 60, counts


def _streaming_run(out, bs, oom_at=None, max_steps=6, **kw):
    train, targets = synthetic_mixture()
    streams = {
        d: train.filter(lambda r, d=d: r["domain"] == d).remove_columns(["domain"]).to_iterable_dataset()
        for d in sorted(set(train["domain"]))
    }
    args = GrapeConfig(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=bs, learning_rate=0.0,
        lr_scheduler_type="constant", reweight_domains_every=2, reweight_tasks_every=2, reweight_batch_size=4,
        reweight_mini_batch_size=2, domain_step_size=200, task_step_size=200, report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0, plot_file="", save_strategy="no", **kw,
    )  # fmt: skip
    trainer = oom_once_trainer()(model=tiny_llama(), args=args, train_dataset=streams, target_datasets=targets)
    trainer.oom_at = oom_at
    trainer.train()
    return trainer


def test_streaming_auto_find_batch_size_retry_restarts_the_reweighting_streams(tmp_path):
    """A retry after an out-of-memory error reads the per-domain reweighting streams from where the `train()` call
    found them (their start here), as a run started at the retry's batch size: not from the failed attempt's
    positions, which would give other reweighting minibatches and so other weights."""
    retry = _streaming_run(tmp_path / "retry", 4, oom_at=3, auto_find_batch_size=True)
    direct = _streaming_run(tmp_path / "direct", 3)
    assert retry._train_batch_size == 3
    assert retry._domain_stream_reads == direct._domain_stream_reads
    assert torch.equal(retry.mixture_state.domain_weights, direct.mixture_state.domain_weights)
    assert torch.equal(retry.mixture_state.task_weights, direct.mixture_state.task_weights)


@pytest.mark.parametrize("content", ["[[1, 2]]", '{"zz": [1, 2]}', '{"a": 3}', "not json"])
def test_an_unreadable_streams_record_restarts_the_streams_with_a_warning(tmp_path, content, caplog):
    """A `grape_streams_<process>.json` that is not a map of this run's domains to [seed, read] (a corrupt or foreign
    file) is not used: the resume warns and restarts the reweighting streams instead of failing or reading it."""
    trainer = _streaming_run(tmp_path / "run", 2, max_steps=1)
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "grape_streams_0.json").write_text(content)
    trainer._domain_stream_reads = {"a": [5, 5]}
    with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
        trainer._load_stream_reads(str(folder))
    assert trainer._domain_stream_reads == {} and trainer._domain_iters == {}
    assert "grape_streams_0.json" in caplog.text and "restart" in caplog.text


def test_every_process_saves_its_own_streams_record(tmp_path, monkeypatch):
    """Each process draws its own reweighting minibatches: its record is named by its process index and written by
    it, whether or not it is the process that saves the model (`should_save`)."""
    trainer = _streaming_run(tmp_path / "run", 2, max_steps=2)
    monkeypatch.setattr(type(trainer.args), "process_index", property(lambda self: 1))
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "ck"), _internal_call=True)
    saved = json.loads((tmp_path / "ck" / "grape_streams_1.json").read_text())
    assert saved == trainer._domain_stream_reads and saved
    assert not (tmp_path / "ck" / "grape_streams_0.json").exists()
