"""rv32 audit fixes."""

from __future__ import annotations

import logging

from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def test_a_resume_past_the_first_update_is_not_warned_about_as_never_reweighted(tmp_path, caplog):
    """F2: the gr31 never-reweighted warning compared the period with the steps left after a resume, so resuming a
    150-step run with reweight_domains_every=100 from its step-100 checkpoint warned that the weights 'stay at their
    initial values, and are exported as the grape mixture', although they were updated at step 100."""
    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, max_steps=8, reweight_domains_every=5, reweight_tasks_every=5, plot_file=None)
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
        trainer._warn_if_never_reweighted(5, 8)  # resumed from checkpoint-5: updated at step 5
        trainer._warn_if_never_reweighted(0, 8)  # the whole run reaches step 5
    assert not [r for r in caplog.records if "never updates" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="hf_ext.grape.trainer"):
        trainer._warn_if_never_reweighted(3, 4)  # a 4-step run never reaches step 5, resumed or not
    assert len([r for r in caplog.records if "never updates" in r.getMessage()]) == 2  # tasks and domains
