"""Pass 34 (lead): a NeuralGrok run in which no outer step falls says so (ng38 left-alone)."""

import logging

import pytest


@pytest.mark.parametrize(("outer_every", "warned"), [(3, True), (2, False), (1, False)])
def test_a_run_without_any_outer_step_warns(tiny_amplified_trainer, tmp_path, caplog, outer_every, warned):
    trainer = tiny_amplified_trainer(tmp_path, outer_every=outer_every)  # 2 steps
    with caplog.at_level(logging.WARNING, logger="hf_ext.neuralgrok.trainer"):
        trainer.train()
    said = [r.getMessage() for r in caplog.records if "no amplifier (outer) update" in r.getMessage()]
    assert bool(said) == warned, said
    assert trainer.num_outer_steps == 2 // outer_every
    if warned:
        assert "outer_every=3" in said[0] and "steps 1..2" in said[0]
