"""Mutation pass mu44: tests that kill surviving mutants of the GRAPE code changed in audit pass 37."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_ext.grape.rules import doge_domain_weights, exponentiated_step


@pytest.mark.parametrize(
    "weights, scores, arg",
    [
        (torch.tensor([True, False]), [0.0, 1.0], "weights"),  # a bool tensor would be read as [1, 0]
        ([0.5, 0.5], torch.tensor([True, False]), "scores"),
        (np.array([True, False]), [0.0, 1.0], "weights"),  # a bool array likewise
        ([0.5, 0.5], np.array([True, False]), "scores"),
        (np.array([1 + 0j, 1]), [0.0, 0.0], "weights"),  # a complex array: its imaginary part dropped with a warning
        ([0.5, 0.5], np.array([1j, 0]), "scores"),
    ],
)
def test_bool_and_complex_tensors_and_arrays_are_refused_by_name(weights, scores, arg):
    with pytest.raises(TypeError, match=rf"^{arg} must hold real numbers"):
        exponentiated_step(weights, scores, 1.0)
    doge_arg = {"weights": "domain_weights", "scores": "alignment_scores"}[arg]
    with pytest.raises(TypeError, match=rf"^{doge_arg} must hold real numbers"):
        doge_domain_weights(weights, scores, [1.0, 1.0], 1e-3)


@pytest.mark.parametrize("norms", [[-1e-4, 1e-5], [-1e-9, 2.0]])
def test_doge_refuses_any_negative_gradient_norm_however_small(norms):
    # a gradient norm is never negative: a small negative entry is a caller's bug too, not rounding to let through
    with pytest.raises(ValueError, match="domain_grad_norms must be non-negative"):
        doge_domain_weights([0.5, 0.5], [1.0, -1.0], norms, 1e-3)
    doge_domain_weights([0.5, 0.5], [1.0, -1.0], [0.0, 2.0], 1e-3)  # a zero norm is a norm


def test_a_zero_step_returns_the_normalised_weights_exactly():
    # softmax(log w) is w only up to rounding: a step of 0 must leave the (normalised) weights bit for bit
    rng = np.random.default_rng(44)
    for _ in range(200):
        weights = rng.random(int(rng.integers(2, 9))) * 10.0 ** rng.integers(-3, 4)
        expected = torch.as_tensor(weights, dtype=torch.float64)
        expected = expected / expected.max()
        expected = expected / expected.sum()
        got = exponentiated_step(weights.tolist(), rng.normal(size=weights.size).tolist(), 0.0)
        assert torch.equal(got, expected)


def test_large_list_token_columns_are_integers_too():
    # datasets' LargeList(Value("int64")) (a large_list<int64> Arrow column) holds integer ids: accepted like a list
    import datasets

    from hf_ext.grape.data import check_token_types

    features = datasets.Features(
        {
            "input_ids": datasets.LargeList(datasets.Value("int64")),
            "attention_mask": datasets.LargeList(datasets.Value("bool")),
            "labels": datasets.LargeList(datasets.Value("int32")),
        }
    )
    good = datasets.Dataset.from_dict(
        {"input_ids": [[1, 2, 3]], "attention_mask": [[True, True, True]], "labels": [[1, 2, -100]]}, features=features
    )
    check_token_types(good, "train_dataset")
    floats = good.cast_column("input_ids", datasets.LargeList(datasets.Value("float64")))
    with pytest.raises(ValueError, match=r"^train_dataset has input_ids of type double"):
        check_token_types(floats, "train_dataset")


def test_prepare_target_refuses_float_token_ids_by_name():
    # the recipe calls prepare_target directly: float ids were cut to integers by the padding (3.5 trained as 3)
    import datasets

    from hf_ext.grape.data import prepare_target

    floats = datasets.Dataset.from_dict({"input_ids": [[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]]})
    with pytest.raises(ValueError, match=r"^target_datasets\['t'\] has input_ids of type double"):
        prepare_target("t", floats, None, 8)
    ints = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]]})
    assert prepare_target("t", ints, None, 8)["input_ids"] == [[1, 2, 3], [4, 5, 6]]
