"""Pass-35 GRAPE audit fixes (gr35)."""

from __future__ import annotations

import pytest
from grape_synthetic import checkpointed_run, quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def test_resume_with_another_max_grad_norm_is_refused(tmp_path):
    """max_grad_norm clips every reweighting gradient, so it scales each <g_k, g_tgt> and <h_n, g_alpha> as a step size
    does; a resume with another clip went on silently while a changed step size was refused (gr35 F1)."""
    train, targets, checkpoint = checkpointed_run(tmp_path / "run")
    args = quick_grape_args(tmp_path / "resumed", max_steps=4, reweight_domains_every=2, reweight_tasks_every=2,
                            max_grad_norm=0.1)  # fmt: skip
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    with pytest.raises(ValueError, match=r"max_grad_norm=1\.0 -> 0\.1"):
        trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 0  # refused before anything was restored


def test_reference_model_that_is_not_a_model_is_refused_by_name(tmp_path):
    """A folder name given as reference_model (instead of reference_model_name_or_path) failed with a bare
    AttributeError ('str' object has no attribute 'to') inside the constructor (gr35 F2)."""
    train, _ = synthetic_mixture()
    args = quick_grape_args(tmp_path, reweight_method="doremi")
    with pytest.raises(TypeError, match=r"reference_model must be a model.*reference_model_name_or_path"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, reference_model=str(tmp_path / "ref"))


def test_reference_model_with_a_method_that_never_reads_it_is_refused(tmp_path):
    """DoReMi's reference model passed to another method was dropped without a word (gr35 F2)."""
    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, reweight_method="grape")
    with pytest.raises(ValueError, match=r"reference_model=\.\.\. is read only by reweight_method='doremi'"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets,
                     reference_model=tiny_llama(seed=1))  # fmt: skip


def test_mixture_file_without_the_requested_weights_names_the_entry(tmp_path):
    """A mixture-format file lacking 'average_domains' (or 'domains') failed with a bare KeyError (gr35 F3)."""
    import json

    from hf_ext.grape import load_mixture

    path = tmp_path / "mixture.json"
    path.write_text(json.dumps({"format": "hf_ext.grape.mixture", "domains": {"a": 0.5, "b": 0.5}}))
    assert load_mixture(str(path)) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match=r"has no 'average_domains' entry.*--mixture_key average"):
        load_mixture(str(path), "average")


def test_a_training_loss_other_than_the_models_own_warns(tmp_path, caplog):
    """cj35 left-alone, fixed by the lead: the reweighting reads model(**batch).loss, so a subclass overriding
    compute_loss (transformers' documented extension point), compute_loss_func= or label smoothing trained another
    objective than the one the mixture was fitted to, without a word."""
    import logging

    train, targets = synthetic_mixture()

    class Scaled(GrapeTrainer):
        def compute_loss(self, model, inputs, **kwargs):
            return 3 * super().compute_loss(model, inputs, **kwargs)

    def build(cls=GrapeTrainer, **kw):
        args = quick_grape_args(tmp_path, **kw)
        with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
            caplog.clear()
            cls(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
        return caplog.text

    assert "model's loss" not in build()
    assert "Scaled overrides compute_loss" in build(Scaled)
    assert "label_smoothing_factor=0.1" in build(label_smoothing_factor=0.1)
    assert "model's loss" not in build(Scaled, reweight_method="uniform")  # no reweighting, nothing to fit
