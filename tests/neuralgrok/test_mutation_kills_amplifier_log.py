"""Behaviours of the amplifier's batched path and of the trainer's logging that a second mutation-testing pass found
unchecked.

- `NeuralAmplifier.transform_many` shifts the scores of each tensor by their maximum before `exp`: the transform is a
  softmax, invariant to a constant added to the scores, and must stay finite and equal to the per-tensor MLP path
  when the scores are large;
- `NeuralGrokTrainer` logs `train_accuracy` as the accuracy on the rows of the steps since the previous log, not since
  the start.
"""

import pytest
import torch
from transformers import TrainerCallback

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from hf_ext.neuralgrok.metrics import answer_accuracy_from_logits

P = 11


def test_transform_many_is_invariant_to_a_constant_in_the_scores():
    """Adding 100 to the amplifier's output bias adds 100 to every score, which a softmax ignores: `transform_many`
    (the batched piecewise-linear path, `exp(s - max s)` per tensor) must give the same result as before and as the
    per-tensor MLP path (`torch.softmax`). Without the max shift, exp(s) overflowed float32 (NaN at +100, an error of
    0.2 at +50)."""
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(200, generator=gen), torch.randn(10, 20, generator=gen)]
    torch.manual_seed(0)
    amp = NeuralAmplifier((32, 32)).eval()
    with torch.no_grad():
        before = [t.detach() for t in amp.transform_many(grads)]
        amp.net[-1].bias += 100.0
        after = [t.detach() for t in amp.transform_many(grads)]
        per_tensor = [amp(t, pieces=None).detach() for t in grads]
    for b, a, r, g in zip(before, after, per_tensor, grads):
        assert a.shape == g.shape
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
        assert float(a.norm()) == pytest.approx(amp.c, rel=1e-4)


class _StepAccuracyTrainer(NeuralGrokTrainer):
    """Records, per training step, the answer accuracy and the rows of the step's batch (one micro-batch per step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_accuracies = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            with torch.no_grad():
                accuracy = float(answer_accuracy_from_logits(outputs["logits"], inputs["labels"]))
                self.step_accuracies.append((accuracy, inputs["labels"].shape[0]))
        return (loss, outputs) if return_outputs else loss


class _LoggedAccuracy(TrainerCallback):
    def __init__(self):
        self.logged = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_accuracy" in logs:
            self.logged.append((state.global_step, logs["train_accuracy"]))


def test_logged_train_accuracy_is_the_mean_over_its_logging_window(tmp_path):
    """Each logged `train_accuracy` is the accuracy on the rows of the training batches since the previous log (the
    accumulators are reset at every log). Without the reset it became the running mean since the start of training
    (0.105 logged at step 12 of this run, where that window's mean was 0.031). Every row weighs the same: the partial
    batch at an epoch's end counts its rows, not as a whole batch (the mean of the batches' ratios)."""
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=P + 2, hidden_size=32, num_attention_heads=4))
    args = NeuralGrokConfig(
        output_dir=str(tmp_path),
        gradient_transform="none",
        max_steps=12,
        per_device_train_batch_size=16,
        learning_rate=3e-2,
        logging_steps=4,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        report_to=[],
    )
    rec = _LoggedAccuracy()
    trainer = _StepAccuracyTrainer(model=model, args=args, train_dataset=splits["train"], callbacks=[rec])
    trainer.train()
    assert len(trainer.step_accuracies) == 12
    correct = [accuracy * rows for accuracy, rows in trainer.step_accuracies]
    rows = [n for _, n in trainer.step_accuracies]
    assert len(set(rows)) > 1  # partial batches at the epochs' ends
    assert [step for step, _ in rec.logged] == [4, 8, 12]
    windows = [sum(correct[i : i + 4]) / sum(rows[i : i + 4]) for i in (0, 4, 8)]
    for (_, logged), expected in zip(rec.logged, windows):
        assert logged == pytest.approx(expected, abs=1e-4)
    # the windows differ from the running means, so a cumulative accumulator is told apart
    running = [sum(correct[: i + 4]) / sum(rows[: i + 4]) for i in (0, 4, 8)]
    assert max(abs(w - r) for w, r in zip(windows, running)) > 1e-3
    # and from the means of the batches' ratios, so a per-batch accumulator is told apart
    ratios = [sum(a for a, _ in trainer.step_accuracies[i : i + 4]) / 4 for i in (0, 4, 8)]
    assert max(abs(w - r) for w, r in zip(windows, ratios)) > 1e-3
