"""Synthetic multi-source token data for checking mixture methods: sequences from random sparse Markov chains.

Each chain (fixed by its seed) gives every token `branching` possible successors, so a chain's entropy, and how fast a
model learns it, is set by `branching`. Several chains make source domains that differ in difficulty; the same chain
sampled with another `sample_seed` gives held-out data of a domain.
"""

from __future__ import annotations

import numpy as np


def markov_sequences(
    seed: int, n: int, length: int, vocab: int = 64, branching: int = 2, sample_seed: int | None = None
) -> list[list[int]]:
    """`n` token sequences of `length` from the random sparse Markov chain fixed by `seed`.

    Tokens are drawn from `[3, vocab)` (0-2 are left for pad/bos/eos). `sample_seed` draws a different sample of the
    same chain (held-out data); without it the chain's own generator continues.
    """
    if n < 0 or length < 1 or branching < 1 or vocab <= 3:
        raise ValueError(
            f"need n >= 0, length >= 1, branching >= 1 and vocab > 3; got {n}, {length}, {branching}, {vocab}."
        )
    rng = np.random.default_rng(seed)
    successors = rng.integers(3, vocab, size=(vocab, branching))
    if sample_seed is not None:
        rng = np.random.default_rng([seed, sample_seed])
    out = []
    for _ in range(n):
        tok = int(rng.integers(3, vocab))
        seq = [tok]
        for _ in range(length - 1):
            tok = int(successors[tok, rng.integers(branching)])
            seq.append(tok)
        out.append(seq)
    return out
