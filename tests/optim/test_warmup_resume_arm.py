"""Warmup recipe: every checkpoint records its arm (`warmup_arm.json`), and a resume refuses a checkpoint of another arm
(another optimizer, or the same optimizer with another warmup) or of another --warmup_fraction before any work.

Before, `--arms adamw_no_warmup --resume_from_checkpoint <an adamw_warmup checkpoint>` ran to the end and reported the
warmup arm's trajectory as adamw_no_warmup (so the warmup gap built from it was wrong), and a lion_ar checkpoint resumed
into an adamw arm failed late, after the data was loaded, with torch's "parameter group that doesn't match". A
checkpoint written before the record existed is resumed with a warning."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
        "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--metrics_every", "1",
        "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "steps",
        "--save_steps", "2", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def warm_checkpoint(tmp_path_factory):
    """checkpoint-2 of a 4-step adamw_warmup run with --warmup_fraction 0.25, and that run's results."""
    from hf_ext.recipes.warmup import main

    out = tmp_path_factory.mktemp("warmup_src")
    full = main([*TINY, "--arms", "adamw_warmup", "--warmup_fraction", "0.25", "--max_steps", "4",
                 "--output_dir", str(out)])  # fmt: skip
    return out / "adamw_warmup" / "checkpoint-2", full["adamw_warmup"]


def test_checkpoint_records_its_arm(warm_checkpoint):
    warm_checkpoint, _ = warm_checkpoint
    record = json.loads((warm_checkpoint / "warmup_arm.json").read_text())
    assert record == {"arm": "adamw_warmup", "optimizer": "adamw", "warmup_fraction": 0.25}


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--arms", "adamw_no_warmup"],
         r"--resume_from_checkpoint: .*checkpoint-2 is a checkpoint of arm 'adamw_warmup' \(warmup fraction 0.25, "
         r"not 0.0\), but it would resume arm 'adamw_no_warmup'.*Pass --arms adamw_warmup"),
        (["--arms", "lion_ar_warmup", "--warmup_fraction", "0.25"],  # another optimizer: refused by name, early
         r"checkpoint of arm 'adamw_warmup' \(optimizer adamw, not lion_ar\), but it would resume arm 'lion_ar_warmup'"),
        (["--arms", "adamw_warmup", "--warmup_fraction", "0.1"],
         r"trained with --warmup_fraction 0.25, but this run has --warmup_fraction 0.1.*pass --warmup_fraction 0.25"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_arm_is_refused_before_any_work(tmp_path, warm_checkpoint, argv, match):
    warm_checkpoint, _ = warm_checkpoint
    from hf_ext.recipes import warmup

    out = tmp_path / "dst"
    with pytest.raises(ValueError, match=match):
        warmup.main([*TINY, *argv, "--max_steps", "4", "--output_dir", str(out),
                     "--resume_from_checkpoint", str(warm_checkpoint)])  # fmt: skip
    assert not out.exists()


def test_last_refuses_another_arms_checkpoint_in_the_arm_folder(tmp_path, warm_checkpoint):
    warm_checkpoint, _ = warm_checkpoint
    """`--resume_from_checkpoint` (bare: each arm's newest checkpoint in its folder) checks the arm too."""
    from hf_ext.recipes.warmup import main

    out = tmp_path / "dst"
    shutil.copytree(warm_checkpoint, out / "adamw_no_warmup" / "checkpoint-2")
    with pytest.raises(ValueError, match="checkpoint of arm 'adamw_warmup'.*would resume arm 'adamw_no_warmup'"):
        main([*TINY, "--arms", "adamw_no_warmup", "--max_steps", "4", "--output_dir", str(out),
              "--resume_from_checkpoint"])  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["adamw_no_warmup"]  # nothing written


def test_an_unreadable_record_is_refused_by_name(tmp_path, warm_checkpoint):
    warm_checkpoint, _ = warm_checkpoint
    from hf_ext.recipes.warmup import main

    ck = tmp_path / "checkpoint-2"
    shutil.copytree(warm_checkpoint, ck)
    (ck / "warmup_arm.json").write_text("{")
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint: .*warmup_arm.json cannot be read"):
        main([*TINY, "--arms", "adamw_warmup", "--warmup_fraction", "0.25", "--max_steps", "4",
              "--output_dir", str(tmp_path / "dst"), "--resume_from_checkpoint", str(ck)])  # fmt: skip


def test_a_checkpoint_without_the_record_is_resumed_with_a_warning(tmp_path, warm_checkpoint, caplog):
    """Checkpoints written before the record existed cannot be checked: they resume (as before), with a warning."""
    from hf_ext.recipes.warmup import main

    warm_checkpoint, full = warm_checkpoint

    ck = tmp_path / "checkpoint-2"
    shutil.copytree(warm_checkpoint, ck)
    (ck / "warmup_arm.json").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.warmup"):
        res = main([*TINY, "--arms", "adamw_warmup", "--warmup_fraction", "0.25", "--max_steps", "4",
                    "--output_dir", str(tmp_path / "dst"), "--resume_from_checkpoint", str(ck)])  # fmt: skip
    assert "records no warmup arm" in caplog.text and "resumed as arm adamw_warmup unchecked" in caplog.text
    assert res["adamw_warmup"]["resumed_from"] == str(ck)
    assert res["adamw_warmup"]["train_loss"] == full["train_loss"] and len(full["train_loss"]) == 4
    assert res["adamw_warmup"]["eval_loss"] == full["eval_loss"]
