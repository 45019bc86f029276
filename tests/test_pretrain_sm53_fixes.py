"""sm53: a pretrain resume refused at the learning-rate schedule check (it needs the Trainer) wrote its run record,
and left the `--output_dir` it created, before the refusal."""

import json
import os

import pytest

from hf_ext.recipes.pretrain import RUN_RECORD_NAME, main

from .test_pretrain import TINY

ARGS = TINY + ["--max_steps", "2", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("sm53") / "run"
    main(ARGS + ["--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(run)])
    return run / "checkpoint-1"


def _refused_resume(checkpoint, out):
    with pytest.raises(ValueError, match=r"--learning_rate 0\.001: .*learning-rate schedule differs"):
        main(ARGS + ["--learning_rate", "1e-3", "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(out)])


def test_a_refused_resume_into_a_new_folder_leaves_no_folder(checkpoint, tmp_path):
    """It left `new/out` holding the checkpoint's run record (`pretrain_run.json`); the missing parent `new` goes too."""
    out = tmp_path / "new" / "out"
    _refused_resume(checkpoint, out)
    assert not (tmp_path / "new").exists()


def test_a_refused_resume_leaves_an_existing_folder_and_its_record_alone(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_RECORD_NAME).write_text(json.dumps({"format": 1, "record": "an earlier run's"}))
    (out / "pretrain_results.json").write_text("{}")
    _refused_resume(checkpoint, out)
    assert json.loads((out / RUN_RECORD_NAME).read_text()) == {"format": 1, "record": "an earlier run's"}
    assert sorted(os.listdir(out)) == ["pretrain_results.json", RUN_RECORD_NAME]
