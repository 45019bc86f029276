"""Audit pass 42 (rv53): review of the lead's out-of-memory naming while fitting HyperINF's solvers."""

import pytest
import torch

import hf_ext.hyperinf.influence as influence
from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine

SHAPES = {"q.lora_A": (2, 6)}


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"q.lora_A": torch.randn(4, 2, 6, generator=g)}]


def _schulz_oom_message(monkeypatch, **options):
    def schulz_inverse(matrix, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(influence, "schulz_inverse", schulz_inverse)
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf", **options), SHAPES)
    with pytest.raises(MemoryError) as info:
        engine.fit(_batches())
    return str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"schulz_dtype": torch.float32},
        {"schulz_dtype": None},  # the inversion in `dtype`, float32 by default
        {"schulz_dtype": torch.bfloat16},
    ],
)
def test_schulz_out_of_memory_in_float32_or_narrower_does_not_suggest_float32(monkeypatch, options):
    """The error told a user whose inversion already ran in float32 to pass schulz_dtype=torch.float32 ("half the
    memory of the default float64"), and one in bfloat16 to double its memory. It names that fix only for float64."""
    message = _schulz_oom_message(monkeypatch, **options)
    assert "'q.lora_A'" in message and "6 x 6" in message and "target_modules" in message
    assert "pass schulz_dtype=torch.float32" not in message, message


@pytest.mark.parametrize("options", [{}, {"schulz_dtype": None, "dtype": torch.float64}])
def test_schulz_out_of_memory_in_float64_suggests_float32(monkeypatch, options):
    message = _schulz_oom_message(monkeypatch, **options)
    assert "schulz_dtype=torch.float64" in message and "pass schulz_dtype=torch.float32" in message


def _curvature_allocation_fails_with(monkeypatch, error):
    real_zeros = torch.zeros

    def zeros(*size, **kwargs):
        if size == (6, 6):
            raise error
        return real_zeros(*size, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    engine = InfluenceEngine(InfluenceConfig(method="hyperinf"), SHAPES)
    engine.fit(_batches())


@pytest.mark.parametrize(
    "text",
    [
        # torch's CPU allocator in its Windows (MSVC) and Android builds (c10/core/impl/alloc_cpu.cpp)
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
        "288 bytes.",
        # and where it uses posix_memalign (Linux, macOS)
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 288 bytes. Error code 12 (Cannot allocate memory)",
    ],
)
def test_the_cpu_allocators_error_of_every_platform_is_named(monkeypatch, text):
    """Only allocator errors are renamed a MemoryError naming the layer since this pass, matched by their message: the
    Windows build's "not enough memory" was not among them, so the curvature that did not fit there escaped `fit` as
    the allocator's raw error again (any RuntimeError was renamed before this pass)."""
    error = RuntimeError(text)
    with pytest.raises(MemoryError, match="'q.lora_A'") as info:
        _curvature_allocation_fails_with(monkeypatch, error)
    assert info.value.__cause__ is error


def test_the_vmap_fallback_warning_points_at_the_users_line(monkeypatch):
    """The engine's warnings point at the first frame outside hf_ext.hyperinf since this pass; the per-example
    gradients' one (a forward that torch.func.vmap cannot transform, computed with a loop instead) kept stacklevel=2,
    which named hf_ext/hyperinf/gradients.py's own loop (line 688) for every user of InfluenceEstimator."""
    import inspect
    import warnings

    from datasets import Dataset

    from hf_ext.hyperinf import InfluenceEstimator
    from hf_ext.utils.vmap import FUNC_TRANSFORM_ERRORS

    from .scripts.ddp_influence import rows, tiny_lora

    def vmap(*args, **kwargs):
        raise RuntimeError(f"{FUNC_TRANSFORM_ERRORS[0]}: this forward cannot be transformed")

    monkeypatch.setattr(torch.func, "vmap", vmap)
    estimator = InfluenceEstimator(tiny_lora(), "hyperinf", batch_size=2, distributed=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        estimator.fit(Dataset.from_list(rows(4, 0)))
    found = [(w.filename, w.lineno) for w in caught if "cannot run under torch.func.vmap" in str(w.message)]
    assert found == [(__file__, line)], found
