"""GRAPE fixes of audit pass ta17: an `auto_find_batch_size` retry starts from the mixture state its `train()` call
started with (not the failed attempt's), also after a resume (F2); a `train_sampling_strategy` the mixture sampler
would replace is refused by name (F7)."""

import json
import os

import pytest
from grape_synthetic import run_with_oom

from hf_ext.grape import GrapeConfig


def _run(out, bs, oom_at=None, resume=None, **kw):
    # learning_rate=0: the model never changes, so a failed attempt's optimizer steps (which transformers keeps in the
    # retried model) cannot make the runs differ; only the mixture state can
    return run_with_oom(out, bs, oom_at, resume, max_steps=6, learning_rate=0.0, **kw)


def _summary(trainer):
    st = trainer.mixture_state
    logs = [
        {k: v for k, v in row.items() if "runtime" not in k and "per_second" not in k and "seconds" not in k}
        for row in trainer.state.log_history
    ]
    with open(os.path.join(trainer.args.output_dir, trainer.args.export_mixture_file)) as fh:
        mixture = json.load(fh)
    return {
        "batch_size": trainer._train_batch_size,
        "mixture.json": mixture,
        "trajectory": [
            {
                "step": r["step"],
                "domains": [float(x) for x in r["domain_weights"]],
                "tasks": [float(x) for x in r["task_weights"]],
            }
            for r in st.trajectory
        ],  # fmt: skip
        "schedule": [(start, w.tolist()) for start, w in st.schedule],
        "counts": (st.domain_updates, st.task_updates),
        "sums": (st.domain_weight_sum.tolist(), st.task_weight_sum.tolist()),
        "logs": logs,
    }


def test_auto_find_batch_size_retry_starts_from_the_initial_mixture_state(tmp_path):
    """An out-of-memory error in the step after the step-2 update (bs 4): the retry at bs 3 used to keep that update
    (one extra multiplicative step, a schedule entry at the failed attempt's sampler position 12, a duplicated step-2
    trajectory record, 4 updates counted), so mixture.json and the logs described a run that did not happen. It now
    equals a run started at bs 3."""
    retry = _summary(_run(tmp_path / "retry", 4, oom_at=3, auto_find_batch_size=True, save_strategy="no"))
    direct = _summary(_run(tmp_path / "direct", 3, save_strategy="no"))
    assert retry["batch_size"] == 3
    assert [r["step"] for r in retry["trajectory"]] == [0, 2, 4, 6]
    assert retry["counts"] == (3, 3)
    assert retry == direct


def test_auto_find_batch_size_retry_after_resume_starts_from_the_checkpoint_state(tmp_path):
    """A resume whose first attempt fails after its step-4 update: the retry starts from the checkpoint's mixture state
    (updates at steps 0 and 2), neither the initial one nor the failed attempt's. It equals a resume at the retry's
    batch size."""
    base = _run(tmp_path / "base", 3, save_strategy="steps", save_steps=2)
    checkpoint = os.path.join(base.args.output_dir, "checkpoint-2")
    for name in ("retry", "direct"):  # both resume the same checkpoint in their own output folder
        os.makedirs(tmp_path / name)
    import shutil

    retry_ckpt = shutil.copytree(checkpoint, tmp_path / "retry" / "checkpoint-2")
    direct_ckpt = shutil.copytree(checkpoint, tmp_path / "direct" / "checkpoint-2")
    # the reference resumes at the retry's batch size, which a plain resume refuses (another batch split: gr41 F1);
    # its copy of the checkpoint records that batch size, as the retry trains with it
    state_json = os.path.join(direct_ckpt, "grape_state.json")
    with open(state_json, encoding="utf-8") as fh:
        meta = json.load(fh)
    meta["options"]["per_device_train_batch_size"] = 2
    with open(state_json, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    # the checkpoint's train_batch_size (3) is where auto_find_batch_size resumes; the retry runs at int(3 * 0.9) = 2
    retry = _summary(
        _run(tmp_path / "retry", 3, oom_at=5, resume=str(retry_ckpt), auto_find_batch_size=True, save_strategy="no")
    )
    direct = _summary(_run(tmp_path / "direct", 2, resume=str(direct_ckpt), save_strategy="no"))
    assert retry["batch_size"] == 2
    assert [r["step"] for r in retry["trajectory"]] == [0, 2, 4, 6]
    assert retry["counts"] == (3, 3)
    assert retry == direct


# ---- F7: train_sampling_strategy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["group_by_length", "sequential", "batch_rebalance"])
def test_train_sampling_strategy_the_mixture_sampler_replaces_is_refused(tmp_path, strategy):
    """GrapeTrainer always draws from its MixtureSampler: another strategy used to be accepted and ignored (the same
    batches as 'random')."""
    with pytest.raises(ValueError, match=f"train_sampling_strategy={strategy!r}.*'random'"):
        GrapeConfig(output_dir=str(tmp_path), train_sampling_strategy=strategy, report_to="none", use_cpu=True)


def test_train_sampling_strategy_random_is_accepted(tmp_path):
    GrapeConfig(output_dir=str(tmp_path), train_sampling_strategy="random", report_to="none", use_cpu=True)
