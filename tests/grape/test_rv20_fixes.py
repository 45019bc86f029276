"""GRAPE fix of the rv20 review: a resume that changed only `seed` (with `data_seed` unset, `seed` seeds the data order
and the reweighting draws) was refused naming `data_seed=0 -> 7`, an argument the user never passed. The refusal
stays (the mixture trajectory depends on the data seed) but names what the user changed, and the fix that keeps the
checkpoint's data order; the checkpoint records which argument gave its data seed (`data_seed_from`)."""

import json
import os
import re

import pytest
from grape_synthetic import checkpointed_run, quick_grape_args, tiny_llama

from hf_ext.grape import GrapeTrainer


def _resume(tmp_path, train, targets, ckpt, **overrides):
    args = quick_grape_args(tmp_path, max_steps=4, save_strategy="no", reweight_domains_every=2,
                            reweight_tasks_every=2, **overrides)  # fmt: skip
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.train(resume_from_checkpoint=ckpt)
    return trainer


def test_a_resume_that_changes_only_seed_names_seed_and_the_fix(tmp_path):
    train, targets, ckpt = checkpointed_run(tmp_path / "run")  # seed 0, data_seed unset
    with pytest.raises(ValueError) as refused:
        _resume(tmp_path / "seed7", train, targets, ckpt, seed=7)
    text = str(refused.value)
    assert "other mixture settings: seed=0 -> 7 (data_seed is unset in both runs, so seed seeds the data order" in text
    assert "data_seed=0 -> 7" not in text
    assert (
        "(for the data seed: data_seed=0, which keeps the checkpoint's data order whatever seed is, or seed=0)" in text
    )
    # following the fix: seed 7 with the checkpoint's data seed resumes
    trainer = _resume(tmp_path / "fixed", train, targets, ckpt, seed=7, data_seed=0)
    assert trainer.state.global_step == 4

    # a checkpoint that recorded the data seed only (before data_seed_from) still names seed as this run's source
    state = os.path.join(ckpt, "grape_state.json")
    meta = json.loads(open(state).read())
    assert meta["options"]["data_seed_from"] == "seed"
    del meta["options"]["data_seed_from"]
    with open(state, "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(
        ValueError, match=re.escape("data seed (data_seed when set, else seed)=0 -> 7 (this run's seed=7)")
    ):
        _resume(tmp_path / "older", train, targets, ckpt, seed=7)


def test_a_resume_that_drops_or_changes_data_seed_names_data_seed(tmp_path):
    train, targets, ckpt = checkpointed_run(tmp_path / "run", data_seed=3)
    with pytest.raises(ValueError, match=re.escape("data_seed=3 -> 4. The resumed run")):
        _resume(tmp_path / "four", train, targets, ckpt, data_seed=4)
    with pytest.raises(ValueError, match=re.escape("data_seed=3 -> None (unset, so seed=0 seeds the data order")):
        _resume(tmp_path / "unset", train, targets, ckpt)
    # seed alone may change while data_seed keeps the data order
    assert _resume(tmp_path / "seed", train, targets, ckpt, seed=5, data_seed=3).state.global_step == 4
