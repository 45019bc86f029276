"""Mixture sampler, streaming mixture and mixture-state files."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from hf_ext.grape import MixtureSampler, MixtureState, StreamingMixture, export_mixture, load_mixture

SIZES = (50, 120, 80)


def _state(weights=(0.2, 0.3, 0.5)):
    return MixtureState(["a", "b", "c"], ["t1", "t2"], torch.tensor(weights), torch.tensor([0.5, 0.5]))


def _indices():
    out, start = [], 0
    for n in SIZES:
        out.append(list(range(start, start + n)))
        start += n
    return out


def _domain_of(rows):
    bounds = np.cumsum(SIZES)
    return np.searchsorted(bounds, np.asarray(rows), side="right")


def test_frequencies_match_weights():
    sampler = MixtureSampler(_indices(), _state(), num_samples=30000, seed=3)
    freq = np.bincount(_domain_of(list(sampler)), minlength=3) / 30000
    np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=0.015)


def test_frequencies_follow_updates():
    state = _state()
    sampler = MixtureSampler(_indices(), state, num_samples=40000, seed=1)
    drawn = []
    for i, row in enumerate(sampler):
        drawn.append(row)
        if i == 19999:
            state.set_domain_weights(torch.tensor([0.7, 0.2, 0.1]), sampler.position)
    dom = _domain_of(drawn)
    np.testing.assert_allclose(np.bincount(dom[:20000], minlength=3) / 20000, [0.2, 0.3, 0.5], atol=0.015)
    np.testing.assert_allclose(np.bincount(dom[20000:], minlength=3) / 20000, [0.7, 0.2, 0.1], atol=0.015)
    assert state.schedule[-1][0] == 20000


def test_same_stream_on_every_rank_and_replayable():
    a = list(MixtureSampler(_indices(), _state(), num_samples=500, seed=7))
    b = list(MixtureSampler(_indices(), _state(), num_samples=500, seed=7))
    c = list(MixtureSampler(_indices(), _state(), num_samples=500, seed=8))
    assert a == b and a != c
    # Replaying with the recorded schedule reproduces a stream drawn with a mid-epoch update.
    state = _state()
    s1 = MixtureSampler(_indices(), state, num_samples=400, seed=2)
    first = []
    for i, row in enumerate(s1):
        first.append(row)
        if i == 150:
            state.set_domain_weights(torch.tensor([0.0, 0.0, 1.0]), s1.position)
    replay = list(MixtureSampler(_indices(), state, num_samples=400, seed=2))
    assert first == replay
    assert set(_domain_of(replay[151:])) == {2}


def test_epochs_differ():
    s = MixtureSampler(_indices(), _state(), num_samples=300, seed=0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0


def test_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        MixtureSampler([[0], [], [1]], _state())
    with pytest.raises(ValueError, match="3 domains"):
        MixtureSampler([[0], [1]], _state())


def test_streaming_mixture_follows_weights_without_losing_examples():
    from datasets import Dataset

    streams = {
        n: Dataset.from_dict({"x": list(range(i * 1000, i * 1000 + 40))}).to_iterable_dataset()
        for i, n in enumerate("abc")
    }
    state = _state()
    it = iter(StreamingMixture(streams, state, seed=0, domain_column="domain"))
    first = [next(it) for _ in range(3000)]
    state.set_domain_weights(torch.tensor([0.8, 0.1, 0.1]), 0)
    second = [next(it) for _ in range(3000)]
    for part, expected in ((first, [0.2, 0.3, 0.5]), (second, [0.8, 0.1, 0.1])):
        counts = collections.Counter(e["domain"] for e in part)
        np.testing.assert_allclose([counts[d] / len(part) for d in "abc"], expected, atol=0.03)
    # Each domain's examples come out in order, cycling, across the rebuild of the interleaving.
    for i, d in enumerate("abc"):
        xs = [e["x"] for e in first + second if e["domain"] == d]
        assert xs == [i * 1000 + (j % 40) for j in range(len(xs))]


def test_state_roundtrip_and_mixture_export(tmp_path):
    state = _state()
    state.set_domain_weights(torch.tensor([0.1, 0.1, 0.8]), 64)
    state.set_task_weights(torch.tensor([0.3, 0.7]))
    state.task_ema_loss[0] = 2.5
    state.trajectory.append({"step": 3, "domain_weights": [0.1, 0.1, 0.8], "task_weights": [0.3, 0.7]})
    state.save(str(tmp_path / "ck"))
    back = MixtureState.load(str(tmp_path / "ck"))
    for key in ("domain_weights", "task_weights", "domain_weight_sum", "task_weight_sum"):
        torch.testing.assert_close(getattr(back, key), getattr(state, key), rtol=0, atol=0)
    assert back.task_ema_loss[0] == 2.5 and torch.isnan(back.task_ema_loss[1])
    assert [p for p, _ in back.schedule] == [0, 64] and back.trajectory == state.trajectory
    assert back.domain_updates == 1 and back.task_updates == 1
    assert not list(tmp_path.glob("ck/*.pkl")) and not list(tmp_path.glob("ck/*.bin"))

    data = export_mixture(state, str(tmp_path / "mix.json"), "grape", 10)
    assert data["domains"] == pytest.approx({"a": 0.1, "b": 0.1, "c": 0.8})
    assert load_mixture(str(tmp_path / "mix.json")) == pytest.approx({"a": 0.1, "b": 0.1, "c": 0.8})
    assert load_mixture(str(tmp_path / "mix.json"), "average") == pytest.approx({"a": 0.1, "b": 0.1, "c": 0.8})
    (tmp_path / "plain.json").write_text(json.dumps({"a": 1, "b": 3}))
    assert load_mixture(str(tmp_path / "plain.json")) == {"a": 0.25, "b": 0.75}


@pytest.mark.parametrize("which", ["grape_state.json", "grape_state.safetensors"])
def test_truncated_state_names_the_file(tmp_path, which):
    """Issue 21.6: a truncated checkpoint state used to give a bare JSONDecodeError / SafetensorError."""
    state = _state()
    state.save(str(tmp_path / "ck"))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["grape_state.json", "grape_state.safetensors"]
    path = tmp_path / "ck" / which
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match="grape_state.*corrupt or truncated.*earlier checkpoint"):
        MixtureState.load(str(tmp_path / "ck"))


def test_bad_mixture_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_mixture(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_mixture(str(tmp_path / "bad.json"))
    (tmp_path / "neg.json").write_text(json.dumps({"a": -1, "b": 1}))
    with pytest.raises(ValueError, match="non-negative"):
        load_mixture(str(tmp_path / "neg.json"))
    with pytest.raises(ValueError, match="holds no mixture state"):
        MixtureState.load(str(tmp_path))


def test_sampler_follows_weights_replaced_at_the_same_position():
    """Two updates at one sampler position (an epoch fully prefetched by workers, or a resume onto a recorded position)
    replace the last schedule entry in place; the sampler used to keep the CDF of the replaced weights."""
    state = _state((0.2, 0.3, 0.5))
    sampler = MixtureSampler(_indices(), state, num_samples=8000, seed=4)
    it = iter(sampler)
    drawn = [next(it) for _ in range(2000)]
    state.set_domain_weights(torch.tensor([0.2, 0.3, 0.5]), sampler.position)
    sampler.index_at(0)  # the sampler caches the CDFs of the 2-entry schedule
    state.set_domain_weights(torch.tensor([0.98, 0.01, 0.01]), sampler.position)  # same position: replaced in place
    assert len(state.schedule) == 2 and state.schedule[-1][0] == 2000
    drawn += list(it)
    np.testing.assert_allclose(state.weights_at(2000).tolist(), [0.98, 0.01, 0.01])
    freq = np.bincount(_domain_of(drawn[2000:]), minlength=3) / 6000
    np.testing.assert_allclose(freq, [0.98, 0.01, 0.01], atol=0.01)
    # Every position is drawn with `weights_at(p)`: a fresh sampler replaying the final schedule draws the same stream.
    assert drawn == list(MixtureSampler(_indices(), state, num_samples=8000, seed=4))


def test_sampler_follows_a_swapped_in_schedule():
    """A resume replaces the state's fields with a loaded state of the same schedule length."""
    state = _state((0.2, 0.3, 0.5))
    sampler = MixtureSampler(_indices(), state, num_samples=4000, seed=5)
    sampler.index_at(0)
    loaded = _state((0.01, 0.01, 0.98))
    state.__dict__.update(loaded.__dict__)  # what GrapeTrainer.load_mixture_state does
    freq = np.bincount(_domain_of(list(sampler)), minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.01, 0.01, 0.98], atol=0.01)


def _interrupting_dump(obj, fh, **kwargs):
    fh.write('{\n  "format": "hf_ext.gr')  # half a file, then the process "dies"
    fh.flush()
    raise KeyboardInterrupt("killed while writing")


def test_export_mixture_is_atomic(tmp_path, monkeypatch):
    import hf_ext.grape.state as state_module

    path = tmp_path / "mixture.json"
    export_mixture(_state((0.6, 0.3, 0.1)), str(path), "grape", 10)
    before = path.read_bytes()
    monkeypatch.setattr(state_module.json, "dump", _interrupting_dump)
    with pytest.raises(KeyboardInterrupt):
        export_mixture(_state((0.1, 0.1, 0.8)), str(path), "grape", 20)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_mixture(str(path)) == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})
    assert [p.name for p in tmp_path.iterdir()] == ["mixture.json"]  # no temporary file left behind


def test_weight_plot_is_atomic(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from hf_ext.grape import plot_mixture_trajectory

    trajectory = [
        {"step": 0, "domain_weights": [0.2, 0.3, 0.5], "task_weights": [0.5, 0.5]},
        {"step": 2, "domain_weights": [0.3, 0.3, 0.4], "task_weights": [0.6, 0.4]},
    ]
    path = tmp_path / "mixture_weights.png"
    plot_mixture_trajectory(trajectory, ["a", "b", "c"], ["t1", "t2"], str(path))
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    real_savefig = Figure.savefig

    def interrupted_savefig(self, fname, *args, **kwargs):
        real_savefig(self, fname, *args, **kwargs)  # the bytes reach the file being written ...
        raise KeyboardInterrupt("killed while writing")  # ... and the process dies before it is complete

    monkeypatch.setattr(Figure, "savefig", interrupted_savefig)
    with pytest.raises(KeyboardInterrupt):
        plot_mixture_trajectory(trajectory[:1], ["a", "b", "c"], ["t1", "t2"], str(path), title="other")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mixture_weights.png"]
