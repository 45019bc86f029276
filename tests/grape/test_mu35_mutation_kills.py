"""mu35 mutation run: pins for the gr35 / cj35 GRAPE changes."""

from __future__ import annotations

import logging

from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def _warnings(tmp_path, caplog, cls=GrapeTrainer, trainer_kwargs=None, **kw):
    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, **kw)
    with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
        caplog.clear()
        cls(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets, **(trainer_kwargs or {}))
    return caplog.text


def test_compute_loss_func_warns_and_a_fixed_mixture_does_not(tmp_path, caplog):
    """compute_loss_func= trains another loss than the reweighting reads (warned); a fixed mixture reads no loss, so
    an overridden loss is no mismatch there (as for uniform)."""

    def loss_func(outputs, labels, num_items_in_batch=None):
        return outputs.loss

    assert "compute_loss_func is given" in _warnings(tmp_path, caplog, trainer_kwargs={"compute_loss_func": loss_func})

    class Scaled(GrapeTrainer):
        def compute_loss(self, model, inputs, **kwargs):
            return 3 * super().compute_loss(model, inputs, **kwargs)

    fixed = {"domain_weights": {"a": 0.5, "b": 0.3, "c": 0.2}}
    assert "model's loss" not in _warnings(tmp_path, caplog, Scaled, fixed, reweight_method="fixed")
