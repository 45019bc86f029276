"""rv22 F3/F4: metadata_pretrain's run record (`metadata_run_data.json`) is written and checked by the shared
`write_run_record`/`check_run_record`.

F3: a checkpoint named from another folder was checked against the record in --output_dir, not against the run it
continues: run A's url_conditioned checkpoint resumed into a fresh --output_dir B with another --template and
--max_metadata_tokens was accepted (warning that B's run predated the record) and trained on, and B got no record. It
is now checked against A's record (the parent folder of its url_conditioned/ or baseline/ folder), B records A's run,
and a folder holding another run's checkpoints is refused. F4: --train_file and the other path flags were compared as
raw text (the same file relative and absolute refused); they are compared resolved, old records (raw text) too.
"""

import json
import os
import shutil
from types import SimpleNamespace

import pytest

from hf_ext.recipes import metadata_pretrain as mp
from hf_ext.recipes.metadata_pretrain import RUN_DATA_FILE, main
from hf_ext.recipes.pretrain import _RECORD_MODEL_FLAGS

from .test_resume_run_data import _common, _snapshot


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Run A: --template url, interrupted after url_conditioned/checkpoint-2."""
    out = tmp_path_factory.mktemp("md_rv22") / "A"
    main([*_common(out), "--template", "url"])
    shutil.rmtree(out / "url_conditioned" / "checkpoint-4")
    return out


def test_a_checkpoint_of_another_folder_is_checked_against_its_own_run(interrupted, tmp_path):
    checkpoint = str(interrupted / "url_conditioned" / "checkpoint-2")
    other = tmp_path / "B"
    with pytest.raises(ValueError) as err:
        main([*_common(other), "--template", "url_host", "--max_metadata_tokens", "16", "--resume_from_checkpoint",
              checkpoint])  # fmt: skip
    message = str(err.value)
    assert "--template url_host (the interrupted run used url)" in message
    assert "--max_metadata_tokens 16 (the interrupted run used 32)" in message
    assert repr(str(interrupted)) in message  # the run the checkpoint continues
    assert not other.exists()  # refused before any work
    # with the run's own flags it resumes, and the folder records that run: a later resume of it is checked too
    main([*_common(other), "--template", "url", "--resume_from_checkpoint", checkpoint])
    assert (other / "url_conditioned" / "checkpoint-4").is_dir()
    assert json.loads((other / RUN_DATA_FILE).read_text()) == json.loads((interrupted / RUN_DATA_FILE).read_text())
    with pytest.raises(ValueError, match=r"--template url_host \(the interrupted run used url\)"):
        main([*_common(other), "--template", "url_host", "--resume_from_checkpoint"])


def test_a_checkpoint_of_another_folder_is_refused_beside_another_runs_checkpoints(interrupted, tmp_path):
    other = tmp_path / "B"
    shutil.copytree(interrupted / "url_conditioned" / "checkpoint-2", other / "baseline" / "checkpoint-2")
    before = _snapshot(other)
    with pytest.raises(ValueError, match=r"which holds checkpoints of another run \(.*baseline.checkpoint-2\)"):
        main([*_common(other), "--template", "url", "--resume_from_checkpoint",
              str(interrupted / "url_conditioned" / "checkpoint-2")])  # fmt: skip
    assert _snapshot(other) == before


def _args(tmp_path, train_file):
    data = SimpleNamespace(**{**dict.fromkeys(mp.RUN_DATA_FLAGS), "train_file": train_file})
    meta = SimpleNamespace(**{**dict.fromkeys(mp.RUN_META_FLAGS), "layout": "context", "template_defaulted": False})
    model = SimpleNamespace(**dict.fromkeys(_RECORD_MODEL_FLAGS))
    training = SimpleNamespace(seed=42, output_dir=str(tmp_path / "run"), resume_from_checkpoint="last")
    return data, meta, training, model


@pytest.mark.parametrize("old_record", [False, True])
def test_local_paths_are_compared_resolved(tmp_path, monkeypatch, old_record):
    """The same --train_file relative in the interrupted run and absolute on the resume is that run's file; the same
    relative string from another directory names another file. `old_record`: a record written before the paths were
    recorded resolved (as the recipe wrote it, raw text)."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "docs.jsonl").write_text('{"text": "x", "url": "https://a.b/c"}\n')
    monkeypatch.chdir(first)
    data, meta, training, model = _args(tmp_path, "docs.jsonl")
    record = mp._run_data(data, meta, training, model)
    os.makedirs(training.output_dir)
    if old_record:
        with open(os.path.join(training.output_dir, RUN_DATA_FILE), "w") as fh:
            json.dump(record, fh)
    else:
        from hf_ext.recipes._common import write_run_record

        write_run_record(training.output_dir, RUN_DATA_FILE, record)
    data.train_file = str(first / "docs.jsonl")
    mp._check_run_data(data, meta, training, model)
    monkeypatch.chdir(second)
    data.train_file = "docs.jsonl"
    if old_record:  # an unresolved record can only be resolved where it is checked: here, the other file
        mp._check_run_data(data, meta, training, model)
    else:
        with pytest.raises(ValueError, match=r"--train_file .*b/docs.jsonl \(the interrupted run used .*a/docs.jsonl"):
            mp._check_run_data(data, meta, training, model)
