"""mu46 mutation kills (NeuralGrok): transform_many's own `pieces` check, which its joint path over several tensors
needs (with one tensor it defers to the amplifier's call, which checks too)."""

import pytest
import torch

from hf_ext.neuralgrok import NeuralAmplifier


def test_transform_many_over_several_tensors_refuses_an_unknown_pieces_option():
    torch.manual_seed(0)
    amplifier = NeuralAmplifier((4,))
    grads = [torch.randn(100), torch.randn(50)]
    # without the check, "exact" acted as "auto" silently and a list failed with "'int' object has no attribute 'to'"
    with pytest.raises(ValueError, match="pieces='exact' must be 'auto', None"):
        amplifier.transform_many(grads, pieces="exact")
    with pytest.raises(ValueError, match="pieces=a list"):
        amplifier.transform_many(grads, pieces=[1, 2, 3])
    for given in ("auto", None):
        out = amplifier.transform_many(grads, pieces=given)
        assert [o.shape for o in out] == [g.shape for g in grads]
