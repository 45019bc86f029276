"""Pass-36 review fixes (rv36) of the pass-35 GRAPE changes."""

from __future__ import annotations

from grape_synthetic import checkpointed_run, quick_grape_args, tiny_llama

from hf_ext.grape import GrapeTrainer


def test_a_method_without_reweighting_gradients_resumes_with_another_max_grad_norm(tmp_path):
    """max_grad_norm shapes the mixture only through the clipped reweighting gradients of grape* / doge; uniform (and
    fixed, doremi) compute none, so a resume with another clip (as with another learning rate) is not refused (rv36 F1:
    the gr35 check refused it as a changed mixture setting)."""
    train, targets, checkpoint = checkpointed_run(tmp_path / "run", reweight_method="uniform")
    args = quick_grape_args(tmp_path / "resumed", max_steps=4, reweight_domains_every=2, reweight_tasks_every=2,
                            reweight_method="uniform", max_grad_norm=0.5)  # fmt: skip
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 4


def test_the_compute_loss_override_warning_does_not_claim_another_loss_is_trained(tmp_path, caplog):
    """A subclass overriding compute_loss only to record or log (then super()) trains the model's own loss; the gr35
    warning stated 'training minimises another loss than the model's own' for it (rv36 F2). It now says the override
    may change the loss; compute_loss_func= and label smoothing, which do change it, keep the definite wording."""
    import logging

    from grape_synthetic import synthetic_mixture

    train, targets = synthetic_mixture()

    class Logging(GrapeTrainer):
        def compute_loss(self, model, inputs, **kwargs):
            loss = super().compute_loss(model, inputs, **kwargs)
            self.seen = getattr(self, "seen", 0) + 1
            return loss

    def warning(cls=GrapeTrainer, **kw):
        with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
            caplog.clear()
            cls(
                model=tiny_llama(), args=quick_grape_args(tmp_path, **kw), train_dataset=train, target_datasets=targets
            )
        return caplog.text

    text = warning(Logging)
    assert "Logging overrides compute_loss, so training may minimise another loss" in text
    assert "returns the model's loss unchanged" in text
    assert "training minimises another loss" in warning(label_smoothing_factor=0.1)
