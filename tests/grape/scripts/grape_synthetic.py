"""Synthetic multi-domain token data and tiny Llama models shared by the GRAPE tests and launched scripts."""

from __future__ import annotations

import numpy as np

VOCAB = 64


def markov_sequences(
    seed: int, n: int, length: int, vocab: int = VOCAB, branching: int = 2, sample_seed: int | None = None
) -> list[list[int]]:
    """Sequences from a random sparse Markov chain (fixed by `seed`): each token has `branching` successors.

    `sample_seed` draws a different set of sequences from the same chain (held-out data).
    """
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


def synthetic_mixture(n_per_domain: int = 48, length: int = 16, n_target: int = 24):
    """Three source domains from distinct generators; targets `t_a` (served by `a`) and `t_b` (served by `b`)."""
    from datasets import Dataset

    rows, domains = [], []
    for d, seed in (("a", 1), ("b", 2), ("c", 3)):
        seqs = markov_sequences(seed, n_per_domain, length)
        rows += seqs
        domains += [d] * len(seqs)
    train = Dataset.from_dict({"input_ids": rows, "domain": domains})
    targets = {
        "t_a": Dataset.from_dict({"input_ids": markov_sequences(1, n_target, length)}),
        "t_b": Dataset.from_dict({"input_ids": markov_sequences(2, n_target, length)}),
    }
    return train, targets


def tiny_llama(vocab: int = VOCAB, hidden: int = 32, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)
