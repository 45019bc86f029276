"""A save killed before `trainer_state.json` (which Trainer writes last) leaves a `checkpoint-N` folder without it.
`resume_from_checkpoint=True` on hf_ext's Trainers (and `train_or_restore_finished`, `train_with_rollback`) must then
resume the newest complete checkpoint, as the recipes' `--resume_from_checkpoint last` does, and continue exactly as the
uninterrupted run; the half-written folder named explicitly is refused with a message saying why."""

import os

import pytest

from .test_utils_resume_fixes import _tiny

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Killed(Exception):
    """Stands for the SIGKILL that ends a process in the middle of a checkpoint save."""


def _args(folder):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(folder), max_steps=6, per_device_train_batch_size=2, save_steps=2,
                             save_strategy="steps", report_to="none", use_cpu=True, learning_rate=1e-2,
                             logging_steps=1, disable_tqdm=True, seed=0)  # fmt: skip


def _data():
    from datasets import Dataset

    return Dataset.from_dict(
        {"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [2.0, 0.0, -1.0]] * 8, "labels": [1.0, 0.0, 2.0] * 8}
    )


def _trainer(folder):
    from transformers import Trainer

    from hf_ext.utils.resume import with_loss_window

    return with_loss_window(Trainer)(model=_tiny(), args=_args(folder), train_dataset=_data())


def _killed_at_last_save(folder, monkeypatch):
    """Train to step 6, the last save dying after every file but `trainer_state.json` (the order Trainer writes)."""
    from transformers import TrainerState

    save = TrainerState.save_to_json

    def dies_at_step_6(self, path):
        if self.global_step == 6:
            raise _Killed
        return save(self, path)

    with monkeypatch.context() as patch:
        patch.setattr(TrainerState, "save_to_json", dies_at_step_6)
        with pytest.raises(_Killed):
            _trainer(folder).train()
    half = folder / "checkpoint-6"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()


@pytest.mark.parametrize("how", ["train", "train_or_restore_finished"])
def test_resume_true_continues_from_the_newest_complete_checkpoint_after_a_killed_save(tmp_path, monkeypatch, how):
    import torch

    from hf_ext.utils.resume import train_or_restore_finished

    full = _trainer(tmp_path / "full")
    full.train()
    _killed_at_last_save(tmp_path / "killed", monkeypatch)
    resumed = _trainer(tmp_path / "killed")
    # before: transformers' get_last_checkpoint took checkpoint-6 and train() failed with a raw FileNotFoundError
    if how == "train":
        resumed.train(resume_from_checkpoint=True)
    else:
        train_or_restore_finished(resumed, True)
    assert resumed.state.global_step == 6
    assert torch.equal(resumed.model.w, full.model.w)  # steps 5 and 6 redone from checkpoint-4, as uninterrupted
    logged = [(h["step"], h["loss"]) for h in full.state.log_history if "loss" in h]
    assert [(h["step"], h["loss"]) for h in resumed.state.log_history if "loss" in h] == logged
    assert (tmp_path / "killed" / "checkpoint-6" / "trainer_state.json").is_file()  # written again, complete


def test_a_half_written_checkpoint_named_explicitly_is_refused_with_the_reason(tmp_path, monkeypatch):
    from hf_ext.utils.resume import train_or_restore_finished

    _killed_at_last_save(tmp_path, monkeypatch)
    half = str(tmp_path / "checkpoint-6")
    with pytest.raises(ValueError, match="no trainer_state.json"):
        _trainer(tmp_path).train(resume_from_checkpoint=half)
    with pytest.raises(ValueError, match="no trainer_state.json"):
        train_or_restore_finished(_trainer(tmp_path), half)
    with pytest.raises(ValueError, match="No valid checkpoint found"):  # only the half-written one
        for name in ("checkpoint-2", "checkpoint-4"):
            os.remove(tmp_path / name / "trainer_state.json")
        _trainer(tmp_path).train(resume_from_checkpoint=True)


def test_a_half_written_checkpoint_is_no_rollback_target(tmp_path):
    from hf_ext.fp8.callback import _last_checkpoint_before

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    # before: checkpoint-6, whose resume then failed
    assert _last_checkpoint_before(str(tmp_path), 8) == str(tmp_path / "checkpoint-4")
    assert _last_checkpoint_before(str(tmp_path), 4) == str(tmp_path / "checkpoint-2")
    os.remove(tmp_path / "checkpoint-2" / "trainer_state.json")
    assert _last_checkpoint_before(str(tmp_path), 4) is None
