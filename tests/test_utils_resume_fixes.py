"""`hf_ext.utils.resume`: the dashed `--resume-from-checkpoint` spelling, and the checks every checkpointing recipe
runs before any work (leftover checkpoints of an earlier run, a checkpoint beyond --max_steps)."""

import json

import pytest


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--resume-from-checkpoint"], ["--resume_from_checkpoint=last"]),
        (["--resume-from-checkpoint", "--output_dir", "o"], ["--resume_from_checkpoint=last", "--output_dir", "o"]),
        (["--resume-from-checkpoint", "a/checkpoint-2"], ["--resume_from_checkpoint", "a/checkpoint-2"]),
        (["--resume-from-checkpoint=a/checkpoint-2"], ["--resume_from_checkpoint=a/checkpoint-2"]),
        (["--resume_from_checkpoint"], ["--resume_from_checkpoint=last"]),
    ],
)
def test_normalize_resume_argv_handles_the_dashed_spelling(argv, expected):
    """The bare dashed alias (shown in --help) used to be an argparse error; now every spelling becomes the
    underscore one."""
    from hf_ext.utils.resume import normalize_resume_argv

    assert normalize_resume_argv(argv) == expected


def test_bare_dashed_flag_parses_to_the_last_checkpoint(tmp_path):
    """Through the recipes' parser: a bare `--resume-from-checkpoint` resumes the newest checkpoint."""
    from transformers import TrainingArguments

    from hf_ext.recipes._common import parse_recipe_args

    ckpt = _checkpoint(tmp_path / "checkpoint-3", 3)
    (args,) = parse_recipe_args((TrainingArguments,), ["--output_dir", str(tmp_path), "--resume-from-checkpoint"])
    assert args.resume_from_checkpoint == str(ckpt)


def test_fresh_run_refuses_leftover_checkpoints(tmp_path):
    from hf_ext.utils.resume import check_checkpoint_folders

    check_checkpoint_folders(None, [tmp_path / "nothing-here"])
    _checkpoint(tmp_path / "run" / "checkpoint-4", 4)
    for value in (None, False, "false", ""):
        with pytest.raises(ValueError, match="checkpoints of an earlier run.*--resume_from_checkpoint.*--output_dir"):
            check_checkpoint_folders(value, [str(tmp_path / "run")])
    check_checkpoint_folders("last", [str(tmp_path / "run")], max_steps=4)  # a resume is fine


def test_resume_refuses_a_checkpoint_beyond_max_steps(tmp_path):
    from hf_ext.utils.resume import check_checkpoint_folders

    ckpt = _checkpoint(tmp_path / "checkpoint-9", 9)
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=6)
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        check_checkpoint_folders("last", [str(tmp_path)], max_steps=6)
    check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=9)  # a finished run of the same length
    check_checkpoint_folders(str(ckpt), [str(tmp_path)], max_steps=-1)  # epoch-based: not compared
