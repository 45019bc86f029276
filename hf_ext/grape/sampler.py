"""Samplers whose domain weights change during training.

* `MixtureSampler`: a `torch.utils.data.Sampler[int]` over a map-style dataset (one index list per domain). The
  sequence at position `p` of the run is a pure function of `(seed, epoch, p, weights in force at p)`: the domain is
  chosen by inverse CDF from a seeded uniform, the example uniformly within that domain (with replacement). Every rank
  therefore draws the same index stream (accelerate then shards the batches), and a resumed run re-draws exactly what
  an uninterrupted run drew, given the weight schedule kept in `MixtureState`.
* `StreamingMixture`: a `torch.utils.data.IterableDataset` over per-domain streams (`datasets.IterableDataset` or any
  iterable of examples) mixed by `datasets.interleave_datasets`; when the weights change the interleaving is rebuilt
  with the new probabilities and every domain continues where it stopped (no example is lost or repeated).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import numbers
import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .state import MixtureState, check_weight_vector

_CHUNK = 8192
_SEQ_KEY = "__grape_seq__"
_DOMAIN_KEY = "__grape_domain__"


def _row_indices(rows, arg: str) -> np.ndarray:
    """`rows` as an int64 array of dataset row indices, refused by `arg` unless they are non-negative integers: a
    negative index used to be handed to the dataset, which reads it from the end (another domain's row), and a float
    or bool was truncated to a row silently."""
    if isinstance(rows, (str, bytes, dict)) or not hasattr(rows, "__len__"):
        raise ValueError(f"{arg} must be a sequence of dataset row indices, got {rows!r}.")
    array = np.asarray(rows)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(
            f"{arg} must be a flat sequence of int dataset row indices (not bools, floats or nested lists), got "
            f"{rows if len(rows) <= 8 else list(rows[:8]) + ['...']!r}."
        )
    if (array < 0).any():
        raise ValueError(
            f"{arg} holds the negative row index {int(array[array < 0][0])}; row indices count from 0 (a negative one "
            "would read a row from the end of the dataset, which may belong to another domain)."
        )
    return array.astype(np.int64)


class MixtureSampler(torch.utils.data.Sampler[int]):
    """Draw dataset indices from a domain mixture whose weights are read from a `MixtureState`.

    Args:
        domain_indices (`Sequence[Sequence[int]]`): For each domain (in `state.domain_names` order), the dataset rows
            belonging to it (non-negative ints; the sampler does not see the dataset, so rows past its end are not
            checked here). Every domain needs at least one row.
        state (`MixtureState`): Holds the weight schedule; updates made by the trainer take effect for positions not
            yet drawn.
        num_samples (`int`, *optional*): Indices per epoch; defaults to the total number of rows.
        seed (`int`, *optional*, defaults to 0): Base seed; use the same value on every rank.

    Attributes:
        restart_schedule_on_iter (`bool`): When set, the next `__iter__` first calls
            `state.start_segment(epoch * num_samples)`, so that pass draws with the state's current weights from its
            first position on (set by `GrapeTrainer` for a resume with `ignore_data_skip=True`, which restarts the
            epoch from its first batch); cleared once done.
    """

    def __init__(
        self,
        domain_indices: Sequence[Sequence[int]],
        state: MixtureState,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if len(domain_indices) != len(state.domain_names):
            raise ValueError(
                f"domain_indices has {len(domain_indices)} entries but the state has "
                f"{len(state.domain_names)} domains ({state.domain_names})."
            )
        self.domain_indices = [
            _row_indices(ix, f"domain_indices[{k}] (domain {name!r})")
            for k, (name, ix) in enumerate(zip(state.domain_names, domain_indices))
        ]
        empty = [n for n, ix in zip(state.domain_names, self.domain_indices) if ix.size == 0]
        if empty:
            raise ValueError(f"domains {empty} have no rows; drop them from the mixture or add data.")
        total = sum(int(ix.size) for ix in self.domain_indices)
        if num_samples is not None and (
            isinstance(num_samples, (bool, np.bool_)) or not isinstance(num_samples, numbers.Integral) or num_samples <= 0
        ):  # True used to be taken as an epoch of 1
            raise ValueError(f"num_samples must be a positive int (or None for all rows), got {num_samples!r}.")
        self.num_samples = int(num_samples or total)
        self.state = state
        self._check_schedule()
        self.seed = int(seed)
        self.epoch = 0
        self.restart_schedule_on_iter = False
        #: Global position (over the run) of the next index this sampler hands out.
        self.position = 0
        self._cache_key: tuple | None = None
        self._starts: list[int] = []
        self._cdfs: list[np.ndarray] = []

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _check_schedule(self) -> None:
        """Refuse schedule weights a CDF cannot be built from (NaN, negative, all zero, wrong length) by name: they
        used to draw the first domain only, or never a domain with a negative weight."""
        k = len(self.state.domain_names)
        for i, (start, w) in enumerate(self.state.schedule):
            check_weight_vector(w, k, f"the mixture state's schedule entry {i} (from sampler position {start})")

    def _cdf(self, position: int) -> np.ndarray:
        schedule = self.state.schedule
        # The schedule changes by appending an entry *or* by replacing the last one in place (two updates at the same
        # sampler position), and a resume swaps in a loaded schedule: key the cache on the state's version token and
        # on the entries' objects, not on the length alone, so the weights drawn are always `state.weights_at(p)`.
        key = (getattr(self.state, "schedule_version", None), len(schedule), schedule[-1][0], schedule[-1][1])
        cached = self._cache_key
        if cached is None or key[:3] != cached[:3] or key[3] is not cached[3]:
            self._check_schedule()
            self._starts = [int(s) for s, _ in schedule]
            self._cdfs = []
            for _, w in schedule:
                cdf = np.cumsum(w.double().numpy())
                self._cdfs.append(cdf / cdf[-1])
            self._cache_key = key
        return self._cdfs[max(bisect.bisect_right(self._starts, position) - 1, 0)]

    def _uniforms(self, chunk: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.epoch, chunk])))
        return rng.random((_CHUNK, 2))

    def index_at(self, position_in_epoch: int, u: np.ndarray | None = None) -> tuple[int, int]:
        """`(domain, row)` drawn at `position_in_epoch` of the current epoch (for inspection and tests)."""
        if u is None:
            u = self._uniforms(position_in_epoch // _CHUNK)[position_in_epoch % _CHUNK]
        global_pos = self.epoch * self.num_samples + position_in_epoch
        cdf = self._cdf(global_pos)
        domain = min(int(np.searchsorted(cdf, u[0], side="right")), len(cdf) - 1)
        rows = self.domain_indices[domain]
        return domain, int(rows[min(int(u[1] * rows.size), rows.size - 1)])

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.num_samples
        if self.restart_schedule_on_iter:
            self.restart_schedule_on_iter = False
            self.state.start_segment(base)
        chunk_id, uniforms = -1, None
        for i in range(self.num_samples):
            if i // _CHUNK != chunk_id:
                chunk_id = i // _CHUNK
                uniforms = self._uniforms(chunk_id)
            self.position = base + i + 1
            yield self.index_at(i, uniforms[i % _CHUNK])[1]


class StreamingMixture(torch.utils.data.IterableDataset):
    """Mix per-domain example streams with `datasets.interleave_datasets`, following weight updates.

    Args:
        domain_streams (`dict[str, Iterable[dict]]`): One stream per domain, keyed like `state.domain_names`
            (e.g. `datasets.IterableDataset`s, already tokenized). Finite streams are restarted when exhausted
            (calling `set_epoch` on them when available), so the mixture is infinite: train with `max_steps`.
        state (`MixtureState`): Source of the current domain weights.
        seed (`int`, *optional*, defaults to 0): Seed of the interleaving (offset by the index of the schedule entry
            in force).
        features (`datasets.Features`, *optional*): Features of the examples; inferred from the first stream that has
            them when omitted.
        domain_column (`str`, *optional*): When set, each yielded example carries its domain name under this key.

    Weight changes are picked up at the next example drawn in the process that iterates this dataset, as the schedule
    entry of `state` recorded at `examples_drawn` (the position `GrapeTrainer` records an update at): the stream of a
    pass is a function of the seed, the domain streams and the schedule, so a resumed run that re-reads the skipped
    examples draws what the interrupted run drew. Use
    `dataloader_num_workers=0`: worker processes hold their own copy of the state and would not see updates.
    """

    def __init__(
        self,
        domain_streams: dict[str, Iterable[dict]],
        state: MixtureState,
        seed: int = 0,
        features=None,
        domain_column: str | None = None,
    ):
        super().__init__()
        self.domain_column = domain_column
        if not isinstance(domain_streams, dict) or not domain_streams:
            raise TypeError("domain_streams must be a non-empty dict mapping domain name -> iterable of examples.")
        missing = [n for n in state.domain_names if n not in domain_streams]
        if missing:
            raise ValueError(f"domain_streams lacks the domains {missing}; it has {sorted(domain_streams)}.")
        check_weight_vector(state.domain_weights, len(state.domain_names), "the mixture state's domain_weights")
        self.domain_streams = domain_streams
        self.state = state
        self.seed = int(seed)
        self.features = features
        if self.features is None:
            for stream in domain_streams.values():
                if getattr(stream, "features", None) is not None:
                    self.features = stream.features
                    break
        #: Examples drawn in the current pass (the position a weight update applies from; see `MixtureState.schedule`).
        self.examples_drawn = 0
        self._first_epochs = {
            n: int(getattr(s, "epoch", 0)) for n, s in domain_streams.items() if hasattr(s, "set_epoch")
        }
        #: When set, the next `__iter__` first calls `state.start_segment(0)` (a resume that does not skip the batches
        #: already trained on: the pass draws with the current weights from its first example); cleared once done.
        self.restart_schedule_on_iter = False

    def __iter__(self) -> Iterator[dict]:
        from datasets import Features, IterableDataset, Value, interleave_datasets

        names = self.state.domain_names
        # Every pass reads each stream from the epoch it had when this mixture was built (an earlier pass, e.g. an
        # `auto_find_batch_size` attempt, may have moved it on), and a finite stream's epoch counts its restarts over
        # the pass, across the rebuilds of the interleaving, so each restart reshuffles it anew.
        epochs = dict(self._first_epochs)
        for n, epoch in epochs.items():
            self.domain_streams[n].set_epoch(epoch)
        iterators = {n: iter(self.domain_streams[n]) for n in names}
        counters = dict.fromkeys(names, 0)
        pending = {n: collections.deque() for n in names}
        features = None
        if self.features is not None:
            features = Features({**self.features, _DOMAIN_KEY: Value("string"), _SEQ_KEY: Value("int64")})
        if self.restart_schedule_on_iter:
            self.restart_schedule_on_iter = False
            self.state.start_segment(0)
        # The example at position `p` of this pass is drawn from the interleaving of the schedule entry in force at `p`
        # (rebuilt when that entry changes, seeded by its index): a resume, which re-reads the skipped examples from
        # the start, replays the weights the interrupted run drew them with, and so draws the same stream.
        self.examples_drawn = 0
        version, starts, current, mixed = None, [], None, None
        while True:
            schedule, changed = self.state.schedule, version != getattr(self.state, "schedule_version", None)
            if changed:
                version, starts = getattr(self.state, "schedule_version", None), [start for start, _ in schedule]
            entry = max(bisect.bisect_right(starts, self.examples_drawn) - 1, 0)
            if (
                current is None
                or current[0] != entry
                or (changed and not torch.equal(current[1], schedule[entry][1]))  # replaced in place
            ):
                if mixed is not None:  # its prefetch threads read the domain iterators: let them finish first
                    mixed.close()
                current = (entry, schedule[entry][1].clone())
                weights = current[1].double()
                weights = (weights / weights.sum()).tolist()
                sources = [
                    IterableDataset.from_generator(
                        _DomainSource(self, n, pending[n], iterators, counters, epochs), features=features
                    )
                    for n in names
                ]
                mixed = iter(
                    interleave_datasets(
                        sources,
                        probabilities=weights,
                        seed=self.seed + entry,
                        stopping_strategy="all_exhausted",
                    )
                )
            example = next(mixed)
            name, seq = example.pop(_DOMAIN_KEY), example.pop(_SEQ_KEY)
            queue = pending[name]
            while queue and queue[0][_SEQ_KEY] <= seq:
                queue.popleft()
            self.examples_drawn += 1
            if self.domain_column is not None:
                example[self.domain_column] = name
            yield example


class _DomainSource:
    """Generator callable for one domain: first the examples pulled but not yet emitted, then fresh ones."""

    _uids = itertools.count()
    _live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __init__(
        self, mixture: StreamingMixture, name: str, pending: collections.deque, iterators: dict, counters, epochs
    ):
        self.mixture, self.name, self.pending, self.iterators, self.counters, self.epochs = (
            mixture,
            name,
            pending,
            iterators,
            counters,
            epochs,
        )
        self.uid = next(self._uids)
        self._live[self.uid] = self

    def __getstate__(self) -> dict:
        # `datasets` hashes and copies the generator; live iterators cannot be pickled, so copies point back to the
        # original object through its uid (all within this process).
        return {"name": self.name, "uid": self.uid}

    def __setstate__(self, state: dict) -> None:
        original = self._live[state["uid"]]
        self.__dict__.update(original.__dict__)

    def __call__(self) -> Iterator[dict]:
        name = self.name
        yield from list(self.pending)
        while True:
            for raw in self.iterators[name]:
                example = dict(raw)
                example[_DOMAIN_KEY] = name
                example[_SEQ_KEY] = self.counters[name]
                self.counters[name] += 1
                self.pending.append(example)
                yield example
            if self.counters[name] == 0:
                raise ValueError(f"the stream of domain {name!r} is empty.")
            stream = self.mixture.domain_streams[name]
            if name in self.epochs:
                self.epochs[name] += 1
                stream.set_epoch(self.epochs[name])
            self.iterators[name] = iter(stream)
