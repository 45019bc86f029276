"""Audit pass 42 (lead): out-of-memory errors while fitting HyperINF's solvers, and only those, are named."""

import inspect
import warnings

import pytest
import torch

import hf_ext.hyperinf.influence as influence
from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine, InfluenceEstimator
from hf_ext.hyperinf.linalg import SchulzConvergenceWarning

SHAPES = {"q.lora_A": (2, 6), "v.lora_B": (2, 5)}


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(4, *shape, generator=g) for name, shape in SHAPES.items()} for _ in range(2)]


def test_another_runtime_error_at_the_curvature_allocation_is_not_called_out_of_memory(monkeypatch):
    """A CUDA error from an earlier asynchronous kernel surfaces at the next allocation; it was re-raised as a
    MemoryError telling the user to leave `lm_head` out of `target_modules`. Only allocator failures are renamed."""
    real_zeros = torch.zeros

    def zeros(*size, **kwargs):
        if size == (6, 6):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real_zeros(*size, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf"), SHAPES)
    with pytest.raises(RuntimeError, match="device-side assert") as info:
        engine.fit(_batches())
    assert not isinstance(info.value, MemoryError)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
    ],
)
def test_schulz_inversion_out_of_memory_names_the_layer_and_schulz_dtype(monkeypatch, error):
    """The curvature fits, but its float64 Schulz inversion keeps about six more matrices of its size: the allocator's
    raw error escaped `fit`, naming neither the layer nor schulz_dtype=torch.float32 (half the memory)."""

    def schulz_inverse(matrix, **kwargs):
        raise error

    monkeypatch.setattr(influence, "schulz_inverse", schulz_inverse)
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf"), SHAPES)
    with pytest.raises(MemoryError) as info:
        engine.fit(_batches())
    message = str(info.value)
    assert "'q.lora_A'" in message and "6 x 6" in message and "schulz_dtype=torch.float64" in message
    assert "schulz_dtype=torch.float32" in message and "target_modules" in message
    assert info.value.__cause__ is error


def test_cholesky_out_of_memory_names_the_layer(monkeypatch):
    def cholesky(matrix):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 288 bytes")

    monkeypatch.setattr(torch.linalg, "cholesky", cholesky)
    engine = InfluenceEngine(InfluenceConfig(method="exact"), SHAPES)
    with pytest.raises(MemoryError, match="'q.lora_A'.*Cholesky"):
        engine.fit(_batches())


def test_a_non_memory_error_of_the_solver_is_not_renamed(monkeypatch):
    def schulz_inverse(matrix, **kwargs):
        raise RuntimeError("expected all tensors to be on the same device")

    monkeypatch.setattr(influence, "schulz_inverse", schulz_inverse)
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf"), SHAPES)
    with pytest.raises(RuntimeError, match="same device") as info:
        engine.fit(_batches())
    assert not isinstance(info.value, MemoryError)


def _check_located_at(caught, line):
    found = [(w.category, w.filename, w.lineno) for w in caught if issubclass(w.category, UserWarning)]
    assert found and all((filename, lineno) == (__file__, line) for _, filename, lineno in found), (found, line)
    return {category for category, _, _ in found}


def test_engine_warnings_point_at_the_users_line_when_called_directly():
    """The engine's warnings used stacklevel=3, right through InfluenceEstimator but one frame too far for a user of
    InfluenceEngine itself (the location shown was the interpreter's `sys`, or pytest's own file, instead of the
    call). Schulz not converging, a tracked matrix with zero gradients, and a zero evaluation gradient."""
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf", schulz_iterations=1, schulz_tol=1e-12), SHAPES)
    train = _batches()
    for batch in train:
        batch["v.lora_B"] = torch.zeros_like(batch["v.lora_B"])  # left out of the scores, with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        engine.fit(train)
    assert _check_located_at(caught, line) == {SchulzConvergenceWarning, UserWarning}
    zero = [{name: torch.zeros_like(t) for name, t in batch.items()} for batch in _batches(1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        engine.scores(zero)
    assert _check_located_at(caught, line) == {UserWarning}


def test_engine_warnings_point_at_the_users_line_through_the_estimator():
    from datasets import Dataset

    from .scripts.ddp_influence import rows, tiny_lora

    train = Dataset.from_list(rows(4, 0))
    estimator = InfluenceEstimator(
        tiny_lora(), "hyperinf", batch_size=2, schulz_iterations=1, schulz_tol=1e-12, distributed=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        estimator.fit(train)
    assert SchulzConvergenceWarning in _check_located_at(caught, line)
