"""Fixtures for the GRAPE tests: synthetic multi-domain token data and tiny Llama models."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

from grape_synthetic import VOCAB, markov_sequences, synthetic_mixture, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_mixture()


@pytest.fixture(scope="session")
def grape_helpers():
    """The synthetic-data helpers (markov_sequences, synthetic_mixture, tiny_llama, VOCAB)."""
    return {
        "VOCAB": VOCAB,
        "markov_sequences": markov_sequences,
        "synthetic_mixture": synthetic_mixture,
        "tiny_llama": tiny_llama,
    }


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores); restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
