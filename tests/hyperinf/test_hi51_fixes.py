"""Audit pass 41 (hi51): HyperINF robustness and conventions."""

import pytest

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine


def _never_read():
    raise AssertionError("the gradient source must not be read: the curvature is allocated before the pass")


@pytest.mark.parametrize("method", ["hyperinf", "exact"])
def test_curvature_too_large_to_allocate_names_the_layer_and_the_fix(method):
    """A LoRA on `lm_head` lays its lora_B out as `r x vocab`, so HyperINF's (and the exact GFIM solve's) per-layer
    matrix is `vocab x vocab` (Llama 3: 128256^2 float32 = 61 GiB). Its allocation at the start of `fit` failed with
    the allocator's raw error ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 160000000000 bytes"
    for d = 200000), naming neither the layer nor the cause. Here d = 2^28: 2^58 bytes, more than any address space."""
    name = "base_model.model.lm_head.lora_B.default.weight"
    config = InfluenceConfig(method=method, max_exact_dim=2**28)
    engine = InfluenceEngine(config, {"q.lora_A": (4, 16), name: (4, 2**28)})
    with pytest.raises(MemoryError) as info:
        engine.fit(_never_read)
    message = str(info.value)
    assert repr(name) in message and f"{2**28} x {2**28}" in message
    assert "lm_head" in message and "target_modules" in message and "datainf" in message
    assert isinstance(info.value.__cause__, RuntimeError)
