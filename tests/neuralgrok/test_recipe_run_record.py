"""The neuralgrok recipe records, in each (method, seed) run folder, the flags that define the run's equations, their
split and evaluation, and its model (`neuralgrok_run.json`), and a resume with other values is refused before anything
is written. Before, `--layout reference` (or another `--task` of the same vocabulary, or another
`--num_attention_heads` of the same width) loaded an interleaved run's checkpoint and went on training it on other
equations / as another model, silently."""

import json
import os
import shutil

import pytest

from hf_ext.recipes._common import check_run_record, write_run_record
from hf_ext.recipes.neuralgrok import RUN_RECORD_NAME, main

TINY = [
    "--p", "11", "--hidden_size", "32", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
    "--report_to", "none", "--seeds", "0", "--methods", "none", "--eval_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "1",
]  # fmt: skip


def _snapshot(root):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("grok") / "run"
    main(TINY + ["--max_steps", "1", "--output_dir", str(out)])
    return out


def test_a_fresh_run_records_its_flags(interrupted):
    with open(interrupted / "none-seed0" / RUN_RECORD_NAME, encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["layout"] == "interleaved" and record["task"] == "a+b" and record["p"] == 11
    assert record["seeds"] == 0 and record["hidden_size"] == 32 and record["num_attention_heads"] == 4
    assert "outer_fraction" not in record  # `none` trains on the whole training split, whatever the outer fraction


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--layout", "reference"], r"--layout reference \(the interrupted run used interleaved\)"),
        (["--task", "a-b"], r"--task a-b \(the interrupted run used a\+b\).*Resume with --task a\+b"),
        (["--num_attention_heads", "2"], r"--num_attention_heads 2 \(the interrupted run used 4\)"),
        (["--train_fraction", "0.6"], r"--train_fraction 0.6 \(the interrupted run used 0.5\)"),
    ],
)
def test_a_resume_with_other_data_or_model_is_refused_before_writing(tmp_path, interrupted, argv, match):
    before = _snapshot(interrupted)
    with pytest.raises(ValueError, match=match):
        main(TINY + ["--max_steps", "2", "--output_dir", str(interrupted), "--resume_from_checkpoint", *argv])
    assert _snapshot(interrupted) == before
    named = tmp_path / "other"  # a checkpoint named on the command line: checked against its own run's record
    with pytest.raises(ValueError, match=match):
        main(TINY + ["--max_steps", "2", "--output_dir", str(named), *argv, "--resume_from_checkpoint",
                     str(interrupted / "none-seed0" / "checkpoint-1")])  # fmt: skip
    assert not named.exists()


def test_another_seeds_checkpoint_is_refused(tmp_path, interrupted):
    argv = [a for a in TINY if a != "0"]
    argv[argv.index("--seeds") + 1 : argv.index("--seeds") + 1] = ["1"]
    with pytest.raises(ValueError, match=r"--seeds 1 \(the interrupted run used 0\)"):
        main(argv + ["--max_steps", "2", "--output_dir", str(tmp_path / "o"), "--resume_from_checkpoint",
                     str(interrupted / "none-seed0" / "checkpoint-1")])  # fmt: skip


def test_the_same_flags_resume(tmp_path_factory):
    out = tmp_path_factory.mktemp("grok2") / "run"
    main(TINY + ["--max_steps", "2", "--output_dir", str(out)])
    shutil.rmtree(out / "none-seed0" / "checkpoint-2")  # as if killed after step 1
    result = main(TINY + ["--max_steps", "2", "--output_dir", str(out), "--resume_from_checkpoint"])
    run = result["methods"]["none"]["runs"][0]
    assert run["resumed_from"] == "checkpoint-1" and run["steps_run"] == 2


def test_check_run_record_without_a_record_warns_and_a_broken_one_is_an_error(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        check_run_record(str(tmp_path), "r.json", {"task": "a+b"}, "the data")
    assert "--task are resumed unchecked" in caplog.text
    (tmp_path / "r.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"r.json \(the flags of the interrupted run\) cannot be read"):
        check_run_record(str(tmp_path), "r.json", {"task": "a+b"}, "the data")
    write_run_record(str(tmp_path), "r.json", {"task": "a+b", "dims": [4, 8]})
    check_run_record(str(tmp_path), "r.json", {"task": "a+b", "dims": [4, 8]}, "the data")
    with pytest.raises(ValueError, match=r"--dims 4 16 \(the interrupted run used 4 8\).*Resume with --dims 4 8"):
        check_run_record(str(tmp_path), "r.json", {"task": "a+b", "dims": [4, 16]}, "the data")


def test_another_runs_checkpoints_in_the_run_folder_are_refused_before_the_model_is_built(
    interrupted, tmp_path, monkeypatch
):
    """rs22f: a checkpoint of one run resumed into an --output_dir whose run folder holds another run's checkpoints was
    refused only when the run record was written, after the model was built; now in the argument checks."""
    import hf_ext.recipes.neuralgrok as recipe

    def built(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(recipe, "build_model", built)
    checkpoint = interrupted / "none-seed0" / "checkpoint-1"
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other / "none-seed0" / "checkpoint-1")
    before = _snapshot(other)
    with pytest.raises(ValueError, match=r"which holds checkpoints of another run \(.*checkpoint-1\)"):
        main(TINY + ["--max_steps", "2", "--output_dir", str(other), "--resume_from_checkpoint", str(checkpoint)])
    assert _snapshot(other) == before
