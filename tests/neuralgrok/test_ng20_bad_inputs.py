"""Fix of audit ng20, F2 (NeuralGrok data and amplifier): bad inputs failed with raw errors that did not name the
argument (`NeuralAmplifier(hidden_dims=32)`: "'int' object is not iterable"; `split_arithmetic_dataset(ds, seed="0")`:
numpy's SeedSequence error; `train_fraction="0.5"`: "'<' not supported"), were truncated silently (`chunk_size=2.5` ->
2), or a numpy integer `p` was refused by `build_arithmetic_dataset` while `arithmetic_vocab_size` accepted it.
"""

import numpy as np
import pytest
import torch

from hf_ext.neuralgrok import (
    NeuralAmplifier,
    arithmetic_vocab_size,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)


@pytest.mark.parametrize("hidden_dims", [32, None, "32", 2.0])
def test_amplifier_hidden_dims_not_a_sequence_is_refused_by_name(hidden_dims):
    with pytest.raises(TypeError, match=r"hidden_dims=.* must be a sequence of positive ints.*\(32, 32\)"):
        NeuralAmplifier(hidden_dims=hidden_dims)


def test_amplifier_hidden_dims_int_error_suggests_the_one_layer_tuple():
    with pytest.raises(TypeError, match=r"one hidden layer of width 32: \(32,\)"):
        NeuralAmplifier(hidden_dims=32)


def test_amplifier_accepts_numpy_int_widths_as_python_ints():
    amp = NeuralAmplifier(hidden_dims=[np.int64(8), 4])
    assert amp.hidden_dims == (8, 4) and all(type(h) is int for h in amp.hidden_dims)
    with pytest.raises(ValueError, match="hidden_dims="):
        NeuralAmplifier(hidden_dims=(True, 4))


@pytest.mark.parametrize("chunk_size", [2.5, 1000.5, np.float64(7.25)])
def test_amplifier_fractional_chunk_size_is_refused_not_truncated(chunk_size):
    with pytest.raises(ValueError, match=r"chunk_size=.* must be a whole positive number of entries"):
        NeuralAmplifier(chunk_size=chunk_size)


def test_amplifier_whole_chunk_sizes_stay_valid():
    assert NeuralAmplifier(chunk_size=1e6).chunk_size == 1_000_000
    assert NeuralAmplifier(chunk_size=np.int64(7)).chunk_size == 7


@pytest.fixture(scope="module")
def small():
    return build_arithmetic_dataset("a+b", 11)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(seed="0"), TypeError, r"seed must be an int .* got '0'"),
        (dict(seed=1.5), TypeError, r"seed must be an int"),
        (dict(seed=True), TypeError, r"seed must be an int"),
        (dict(seed=None), TypeError, r"seed must be an int"),
        (dict(seed=-1), ValueError, r"seed=-1 must be >= 0"),
        (dict(train_fraction="0.5"), TypeError, r"train_fraction must be a number .* got '0.5'"),
        (dict(train_fraction=None), TypeError, r"train_fraction must be a number"),
        (dict(train_fraction=True), TypeError, r"train_fraction must be a number"),
        (dict(outer_fraction="0.2"), TypeError, r"outer_fraction must be a number"),
        (dict(outer_fraction=None), TypeError, r"outer_fraction must be a number"),
    ],
)
def test_split_refuses_wrong_types_by_name(small, kw, error, match):
    with pytest.raises(error, match=match):
        split_arithmetic_dataset(small, **kw)


def test_split_accepts_numpy_numbers_like_python_ones(small):
    ref = split_arithmetic_dataset(small, 0.5, 0.2, seed=3)
    got = split_arithmetic_dataset(small, np.float64(0.5), np.float32(0.2), seed=np.int64(3))
    for name in ("train", "inner", "outer", "test"):
        assert torch.equal(got[name][:]["input_ids"], ref[name][:]["input_ids"]), name


def test_build_accepts_a_numpy_int_modulus_like_arithmetic_vocab_size():
    assert arithmetic_vocab_size("a+b", np.int64(11)) == 13
    got = build_arithmetic_dataset("a+b", np.int64(11))[:]["input_ids"]
    assert torch.equal(got, build_arithmetic_dataset("a+b", 11)[:]["input_ids"])


@pytest.mark.parametrize("p", [True, np.bool_(True), 11.0, "11", None])
def test_build_refuses_a_non_int_modulus_by_name(p):
    with pytest.raises(TypeError, match="p must be an int"):
        build_arithmetic_dataset("a+b", p)
