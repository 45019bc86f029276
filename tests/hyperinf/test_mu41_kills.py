"""Mutation-testing kills (mu41) for the pass-35 HyperINF changes."""

from __future__ import annotations

import numpy as np
import torch

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine


def test_engine_shapes_are_tuples_of_python_ints():
    """`shapes` given as lists or numpy integers are kept as `(int, int)` tuples (the documented
    `dict[str, tuple[int, int]]`): a list shape compared unequal to the same tuple."""
    engine = InfluenceEngine(InfluenceConfig(), {"a": [2, 3], "b": (np.int64(4), np.int32(5))})
    assert engine.shapes == {"a": (2, 3), "b": (4, 5)}
    assert all(type(s) is tuple and all(type(x) is int for x in s) for s in engine.shapes.values())


def test_lissa_hvp_reference_refuses_a_zero_depth_empty_or_non_finite_grads():
    """The reference recursion's checks: `num_iterations=0` (no recursion step: `v` itself), an empty `grads`
    (n = 0: the Fisher's 1/n) and `grads` that are not finite floating-point tensors are refused naming the argument."""
    import pytest

    from hf_ext.hyperinf import lissa_hvp_reference

    v, g = torch.randn(2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="`num_iterations` must be a positive int"):
        lissa_hvp_reference(v, g, 0.1, num_iterations=0)
    with pytest.raises(ValueError, match=r"`grads` must have shape \(n, \*v.shape\) with n > 0"):
        lissa_hvp_reference(v, g[:0], 0.1)
    with pytest.raises(TypeError, match="`grads` must be a torch.Tensor"):
        lissa_hvp_reference(v, g.tolist(), 0.1)
    bad = g.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`grads` holds NaN or inf"):
        lissa_hvp_reference(v, bad, 0.1)
    assert lissa_hvp_reference(v, g, 0.1, num_iterations=1).shape == v.shape


def test_peak_memory_takes_a_0d_tensor_interval_as_a_float():
    """A 0-d tensor `interval` is accepted as the number it holds and stored as a float: kept as a tensor,
    `time.sleep(tensor)` raised in the sampling thread, which died and left the peak to the entry/exit samples."""
    import time

    from hf_ext.hyperinf import PeakMemory

    with PeakMemory(interval=torch.tensor(0.001, dtype=torch.float64)) as pm:
        time.sleep(0.05)
        assert pm._thread.is_alive()
    assert type(pm.interval) is float and pm.interval == 0.001


def test_evaluate_response_loss_names_the_example_by_its_dataset_index_across_batches():
    """The refusal names the example by its index in `dataset`, not in its batch (here the second batch of 1)."""
    import pytest
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.hyperinf.selection import evaluate_response_loss

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    answered = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    silent = {"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}
    with pytest.raises(ValueError, match="example 2 of `dataset` has no response token"):
        evaluate_response_loss(model, [answered, answered, silent], batch_size=1)


def test_evaluate_response_loss_refuses_an_empty_dataset():
    """An empty dataset is refused by name (it failed with a ZeroDivisionError)."""
    import pytest
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.hyperinf.selection import evaluate_response_loss

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(ValueError, match="`dataset` is empty"):
        evaluate_response_loss(LlamaForCausalLM(config), [])
