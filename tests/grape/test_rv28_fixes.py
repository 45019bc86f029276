"""rv28 F1: `StreamingMixture` built each new interleaving (`datasets.interleave_datasets`, whose iteration prefetches
the next example of every source in a thread pool) while the previous interleaving was still alive, its prefetch threads
reading the same domain iterators. Since the stream follows the schedule by position (gr27 F1), the Trainer's batch
skipping of a resume replays every schedule entry back to back, so a resume over streams with any read latency (a
remote streaming dataset) failed at once with `ValueError: generator already executing`. The previous interleaving is
now closed (its prefetches finished) before the next one is built."""

import time

import torch
from datasets import IterableDataset

from hf_ext.grape.data import ensure_lm_stream
from hf_ext.grape.sampler import StreamingMixture
from hf_ext.grape.state import MixtureState


def _rows(start, delay):
    for i in range(start, start + 40):
        if delay:
            time.sleep(delay)  # the read latency of a remote stream
        yield {"input_ids": [i, i + 1]}


def _draws(delay, n=30):
    streams = {
        d: ensure_lm_stream(IterableDataset.from_generator(_rows, gen_kwargs={"start": s, "delay": delay}), d)
        for d, s in (("a", 100), ("b", 200))
    }
    state = MixtureState(
        domain_names=["a", "b"], task_names=[], domain_weights=torch.tensor([0.5, 0.5]), task_weights=torch.zeros(0)
    )
    mixture = StreamingMixture(streams, state, seed=0)
    it, seen = iter(mixture), []
    for i in range(n):
        seen.append(next(it)["input_ids"][0])
        if i % 4 == 3:  # an update right after a draw, as a resume's batch skipping replays the schedule
            state.set_domain_weights(torch.tensor([0.2 + 0.05 * i, 1.0]), mixture.examples_drawn)
    return seen


def test_a_weight_change_waits_for_the_previous_interleavings_prefetches():
    assert _draws(delay=0.02) == _draws(delay=0)
