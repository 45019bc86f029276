"""rx27 F1: a finite domain stream of the streaming mixture kept its epoch in the generator of the current interleaving,
which every weight update rebuilds, so after an update each restart called `set_epoch(1)` again and a shuffled stream
replayed one order (2 distinct orders in 7 passes of a 4-row domain); and the epoch set in one pass (an
`auto_find_batch_size` attempt) carried into the next, so the retry read other sequences than a run started at its
batch size. The epochs now count per pass, from the epoch each stream had when the mixture was built."""

import torch
from datasets import Dataset

from hf_ext.grape.sampler import StreamingMixture
from hf_ext.grape.state import MixtureState


def _mixture():
    a = Dataset.from_dict({"input_ids": [[i] for i in range(100, 104)]}).to_iterable_dataset()
    a = a.shuffle(seed=0, buffer_size=4)
    b = Dataset.from_dict({"input_ids": [[i] for i in range(1000, 1400)]}).to_iterable_dataset()
    state = MixtureState(
        domain_names=["a", "b"], task_names=[], domain_weights=torch.tensor([0.5, 0.5]), task_weights=torch.zeros(0)
    )
    return StreamingMixture({"a": a, "b": b}, state, seed=0), state


def _domain_a_passes(mix, state, n=64):
    it, seq = iter(mix), []
    for i in range(n):
        example = next(it)
        if example["input_ids"][0] < 1000:
            seq.append(example["input_ids"][0])
        if i % 6 == 5:  # a weight update every 6 examples, recorded as GrapeTrainer records it
            state.set_domain_weights(state.domain_weights, mix.examples_drawn)
    return [tuple(seq[i : i + 4]) for i in range(0, len(seq) - 3, 4)]


def test_a_finite_stream_is_reshuffled_at_every_restart_across_weight_updates():
    mix, state = _mixture()
    passes = _domain_a_passes(mix, state)
    assert len(passes) >= 6 and len(set(passes)) == len(passes)


def test_a_new_pass_reads_the_streams_from_their_first_epoch_again():
    mix, state = _mixture()
    first = _domain_a_passes(mix, state)
    state.start_segment(0)  # as a new run / an auto_find_batch_size retry starts its schedule again
    again = _domain_a_passes(mix, state)
    assert again == first
