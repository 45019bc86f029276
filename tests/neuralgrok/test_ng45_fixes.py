"""Audit pass 38 (ng45): bad inputs at NeuralGrok's public entry points that gave silently wrong results or raw
errors."""

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_ext.neuralgrok import NeuralAmplifier, arithmetic_accuracy, stability_after_target


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


def test_stability_after_target_refuses_a_target_that_is_not_a_number():
    """A string or None failed with "'<' not supported between instances of 'float' and 'str'" (steps_to_accuracy
    named the argument already); numpy and 0-d tensor targets still work."""
    for target in ("0.9", None, [0.9]):
        with pytest.raises(ValueError, match="target=.* must be a number in \\(0, 1\\]"):
            stability_after_target([1, 2], [0.5, 1.0], target=target)
    expected = stability_after_target([1, 2, 3], [0.5, 0.96, 0.2], target=0.95)
    assert expected["reached"] and expected["accuracy_drops"] == 1
    assert stability_after_target([1, 2, 3], [0.5, 0.96, 0.2], target=np.float32(0.95)) == expected
    assert stability_after_target([1, 2, 3], [0.5, 0.96, 0.2], target=torch.tensor(0.95)) == expected


def test_arithmetic_accuracy_refuses_labels_that_are_not_token_rows():
    """One label per row (a classifier's labels) failed with "IndexError: too many indices for array"; predictions of
    another shape with a numpy broadcasting error."""
    with pytest.raises(ValueError, match=r"got labels \(4,\) and predictions \(4,\)"):
        arithmetic_accuracy(EvalPrediction(predictions=np.zeros(4), label_ids=np.zeros(4)))
    with pytest.raises(ValueError, match=r"got labels \(3, 4\) and predictions \(2, 4\)"):
        arithmetic_accuracy(EvalPrediction(predictions=np.zeros((2, 4)), label_ids=np.zeros((3, 4))))
    labels = np.array([[-100, -100, 2], [-100, -100, 1]])
    ids = np.array([[0, 2, 0], [0, 0, 0]])  # row 0 right (position 1 predicts 2), row 1 wrong
    logits = np.eye(3)[ids]
    assert arithmetic_accuracy(EvalPrediction(predictions=ids, label_ids=labels)) == {"accuracy": 0.5}
    assert arithmetic_accuracy(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 0.5}
    assert arithmetic_accuracy(EvalPrediction(predictions=(logits,), label_ids=labels)) == {"accuracy": 0.5}


def test_grokking_callback_numpy_target_checkpoints(tmp_path, tiny_amplified_trainer):
    """A numpy float32 target (or numpy bool stop_on_target) was accepted and stored as given: the first checkpoint,
    whose trainer_state.json holds the callback's state, failed with "Object of type float32 is not JSON
    serializable" after the training steps. Now stored as Python float / bool."""
    import json

    from hf_ext.neuralgrok import GrokkingCallback

    callback = GrokkingCallback(target=np.float32(0.5), stop_on_target=np.bool_(False))
    assert type(callback.target) is float and type(callback.stop_on_target) is bool
    assert callback.target == pytest.approx(0.5)
    json.dumps(callback.state())
    trainer = tiny_amplified_trainer(tmp_path, save_strategy="steps", save_steps=1)
    trainer.add_callback(callback)
    trainer.train()
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    states = saved["stateful_callbacks"]["GrokkingCallback"]
    assert (states[0] if isinstance(states, list) else states)["args"]["target"] == 0.5
