"""Audit pass 38 (ng45): bad inputs at NeuralGrok's public entry points that gave silently wrong results or raw
errors."""

import pytest
import torch

from hf_ext.neuralgrok import NeuralAmplifier


def test_transform_many_refuses_one_bare_tensor():
    """A single tensor was iterated along its first axis: each entry of ones(3) became its own tensor of norm c
    ([1, 1, 1], where amplifier(ones(3)) gives ones(3) / sqrt(3)); a matrix was normalised row by row."""
    torch.manual_seed(0)
    amplifier = NeuralAmplifier((4,))
    grad = torch.ones(3)
    with pytest.raises(TypeError, match=r"pass \[grad\]"):
        amplifier.transform_many(grad)
    with pytest.raises(TypeError, match="shape \\(2, 3\\)"):
        amplifier.transform_many(torch.ones(2, 3))
    (out,) = amplifier.transform_many([grad])  # the list form is unchanged
    torch.testing.assert_close(out, amplifier(grad))
    torch.testing.assert_close(out, torch.full((3,), 3**-0.5))


def test_integer_or_non_tensor_gradients_are_refused():
    """An integer tensor came back as zeros (the norm-c result cast back to int64), a list failed with
    "'list' object has no attribute 'reshape'"."""
    amplifier = NeuralAmplifier((4,))
    with pytest.raises(TypeError, match="floating-point tensor.*int64"):
        amplifier(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"grads\[1\] must be a floating-point tensor"):
        amplifier.transform_many([torch.ones(2), torch.ones(2, dtype=torch.long)])
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        amplifier([1.0, 2.0])
    with pytest.raises(TypeError, match=r"grads\[0\] must be a torch.Tensor"):
        amplifier.transform_many([[1.0, 2.0]])
    assert amplifier.transform_many([]) == []
    out = amplifier(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert out.dtype == torch.float64 and float(out.detach().norm()) == pytest.approx(1.0)


def test_unknown_pieces_option_is_refused():
    """`pieces="exact"` (any string) acted as "auto", silently."""
    amplifier = NeuralAmplifier((4,))
    grad = torch.randn(100)
    with pytest.raises(ValueError, match="pieces='exact' must be 'auto', None"):
        amplifier.probabilities(grad, pieces="exact")
    with pytest.raises(ValueError, match="pieces='mlp'"):
        amplifier(grad, pieces="mlp")
    with pytest.raises(ValueError, match="pieces=a list"):
        amplifier.transform_many([grad], pieces=[1, 2, 3])
    pieces = amplifier.fast_pieces(grad.numel())
    assert pieces is not None
    for given in ("auto", None, pieces):
        torch.testing.assert_close(amplifier(grad, pieces=given), amplifier(grad, pieces=None))
