"""GRAPE resume batch-split check of audit pass 35, reviewed by rv41: it compares the per-device batch a run trained
with, which an `auto_find_batch_size` retry lowers below the `per_device_train_batch_size` argument."""

import json
import os

import pytest
from grape_synthetic import run_with_oom


def _run(out, bs, oom_at=None, resume=None, **kw):
    return run_with_oom(out, bs, oom_at, resume, **kw)


def _summary(trainer):
    st = trainer.mixture_state
    return {
        "batch_size": trainer._train_batch_size,
        "trajectory": [(r["step"], [float(x) for x in r["domain_weights"]]) for r in st.trajectory],
        "schedule": [(start, w.tolist()) for start, w in st.schedule],
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
    }


@pytest.fixture(scope="module")
def retried_checkpoint(tmp_path_factory):
    """A run started at per_device_train_batch_size=4 whose first step ran out of memory: auto_find_batch_size
    trained it at int(4 * 0.9) = 3, and its checkpoint-2 holds updates at sampler positions of batch size 3."""
    tmp = tmp_path_factory.mktemp("retried")
    base = _run(tmp / "base", 4, oom_at=0, auto_find_batch_size=True, save_strategy="steps", save_steps=2)
    assert base._train_batch_size == 3
    return os.path.join(base.args.output_dir, "checkpoint-2")


def _copy(checkpoint, folder):
    import shutil

    os.makedirs(folder)
    return str(shutil.copytree(checkpoint, folder / "checkpoint-2"))


def test_checkpoint_records_the_batch_it_trained_with(retried_checkpoint):
    with open(os.path.join(retried_checkpoint, "grape_state.json"), encoding="utf-8") as fh:
        assert json.load(fh)["options"]["per_device_train_batch_size"] == 3


def test_resume_at_the_retried_batch_size_is_accepted(tmp_path, retried_checkpoint):
    """Resuming at the batch size the run trained with (3, without auto_find_batch_size) was refused as
    "per_device_train_batch_size=4 -> 3"; it continues the run as the auto_find_batch_size resume does."""
    plain = _summary(
        _run(tmp_path / "plain", 3, resume=_copy(retried_checkpoint, tmp_path / "plain"), save_strategy="no")
    )
    auto = _summary(
        _run(
            tmp_path / "auto",
            4,
            resume=_copy(retried_checkpoint, tmp_path / "auto"),
            auto_find_batch_size=True,
            save_strategy="no",
        )
    )
    assert plain["batch_size"] == auto["batch_size"] == 3
    assert plain == auto


def test_resume_at_the_argument_batch_size_is_refused(tmp_path, retried_checkpoint):
    """Resuming at the argument's batch size 4 without auto_find_batch_size (the Trainer then trains at 4, not at the
    checkpoint's 3) was accepted, re-training sampler positions with the weights of the wrong schedule segment."""
    with pytest.raises(ValueError, match=r"per_device_train_batch_size=3 -> 4"):
        _run(tmp_path / "wrong", 4, resume=_copy(retried_checkpoint, tmp_path / "wrong"), save_strategy="no")
