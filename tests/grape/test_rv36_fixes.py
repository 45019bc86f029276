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
