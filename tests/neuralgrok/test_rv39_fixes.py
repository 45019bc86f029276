"""Audit rv39: the no-outer-step warning follows outer_gradient="next_step", whose outer step runs at the step after
each multiple of outer_every (and at the first step of a resume whose checkpoint left one pending)."""

import logging


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if "no amplifier (outer) update" in r.getMessage()]


def test_next_step_warning_counts_the_outer_step_one_step_later_and_a_pending_one(
    tiny_amplified_trainer, tmp_path, caplog
):
    options = dict(outer_gradient="next_step", outer_every=2, save_strategy="steps", save_steps=2)
    first = tiny_amplified_trainer(tmp_path, **options)  # 2 steps: the step-2 outer step waits for step 3
    with caplog.at_level(logging.WARNING, logger="hf_ext.neuralgrok.trainer"):
        first.train()
    assert first.num_outer_steps == 0
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    caplog.clear()
    resumed = tiny_amplified_trainer(tmp_path, **{**options, "max_steps": 3, "save_strategy": "no"})
    with caplog.at_level(logging.WARNING, logger="hf_ext.neuralgrok.trainer"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.num_outer_steps == 1  # the pending one, at step 3
    assert _warnings(caplog) == []
