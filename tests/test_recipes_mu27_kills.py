"""Mutation kills of audit pass mu27: `checkpoint_run_folder` (which folder names the run of a resumed checkpoint,
as named or through a link) and its use by the warmup recipe's per-arm record check."""

import shutil

import pytest

from hf_ext.recipes import warmup
from hf_ext.recipes._common import checkpoint_run_folder

WARMUP = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--metrics_every", "1",
    "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "steps",
    "--save_steps", "1", "--max_steps", "1", "--arms", "adamw_warmup",
]  # fmt: skip
RECORD = "run.json"


@pytest.fixture
def layout(tmp_path):
    """RUN/checkpoint-1 -> STORE/checkpoint-1 (moved to other storage, linked back) and POINTERS/best ->
    RUN2/checkpoint-1 (a link kept elsewhere)."""
    run, store, run2, pointers = (tmp_path / n for n in ("run", "store", "run2", "pointers"))
    for folder in (run, store / "checkpoint-1", run2 / "checkpoint-1", pointers):
        folder.mkdir(parents=True)
    (run / "checkpoint-1").symlink_to(store / "checkpoint-1")
    (pointers / "best").symlink_to(run2 / "checkpoint-1")
    return tmp_path


def test_the_folder_holding_the_link_with_a_record_names_the_run_even_into_another_output_dir(layout):
    (layout / "run" / RECORD).write_text("{}")
    checkpoint = str(layout / "run" / "checkpoint-1")
    assert checkpoint_run_folder(checkpoint, str(layout / "elsewhere"), RECORD) == str(layout / "run")
    (layout / "store" / RECORD).write_text("{}")  # both hold a record: the folder as named wins
    assert checkpoint_run_folder(checkpoint, str(layout / "elsewhere"), RECORD) == str(layout / "run")


def test_a_link_kept_elsewhere_names_the_run_it_points_into(layout):
    (layout / "run2" / RECORD).write_text("{}")
    best = str(layout / "pointers" / "best")
    assert checkpoint_run_folder(best, str(layout / "pointers"), RECORD) == str(layout / "run2")


def test_without_any_record_the_output_dir_as_named_else_the_resolved_folder(layout):
    linked = str(layout / "run" / "checkpoint-1")
    assert checkpoint_run_folder(linked, str(layout / "run"), RECORD) == str(layout / "run")
    assert checkpoint_run_folder(linked, str(layout / "new"), RECORD) == str(layout / "store")
    best = str(layout / "pointers" / "best")
    assert checkpoint_run_folder(best, str(layout / "new"), RECORD) == str(layout / "run2")


def test_warmup_arm_checkpoint_moved_elsewhere_and_linked_back_is_checked_against_its_arm_record(tmp_path):
    """The warmup recipe's arm folders: a checkpoint moved to other storage and linked back into its arm folder is
    checked against that arm's record (a resume with another --block_size is refused by name), not against the
    storage folder, which holds none."""
    out, store = tmp_path / "out", tmp_path / "store"
    warmup.main(WARMUP + ["--output_dir", str(out)])
    arm = out / "adamw_warmup"
    store.mkdir()
    shutil.move(str(arm / "checkpoint-1"), str(store / "checkpoint-1"))
    (arm / "checkpoint-1").symlink_to(store / "checkpoint-1")
    with pytest.raises(ValueError, match=r"--block_size 16 \(the interrupted run used 32\)"):
        warmup.main(
            WARMUP + ["--block_size", "16", "--max_steps", "2", "--output_dir", str(out),
                      "--resume_from_checkpoint", str(arm / "checkpoint-1")]
        )  # fmt: skip
