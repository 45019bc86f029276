"""The pretrain and warmup recipes record, in the run's (the arm's) folder, the flags that define its data and model
(`pretrain_run.json`, `warmup_run.json`), and a resume with other values is refused by flag name before anything is
written. Before, another --block_size, --train_file or --num_attention_heads of the same width loaded the checkpoint
and went on training silently on other blocks, or as another model, and reported the mix as one run."""

import json
import os
import shutil

import pytest

from hf_ext.recipes import pretrain, warmup
from hf_ext.recipes._common import check_run_record, write_run_record

PRETRAIN = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "4",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--max_new_tokens", "2",
    "--logging_steps", "1", "--model_type", "llama", "--vocab_size", "512", "--save_strategy", "steps",
    "--save_steps", "1", "--max_steps", "2", "--disable_tqdm", "true",
]  # fmt: skip
WARMUP = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--metrics_every", "1",
    "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "steps",
    "--save_steps", "1", "--max_steps", "2", "--arms", "adamw_warmup",
]  # fmt: skip


def _snapshot(root):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step run of each recipe whose last checkpoint is gone (as if killed after step 1)."""
    root = tmp_path_factory.mktemp("records")
    pretrain.main(PRETRAIN + ["--output_dir", str(root / "pretrain")])
    shutil.rmtree(root / "pretrain" / "checkpoint-2")
    warmup.main(WARMUP + ["--output_dir", str(root / "warmup")])
    shutil.rmtree(root / "warmup" / "adamw_warmup" / "checkpoint-2")
    return root


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--num_attention_heads", "2"], r"--num_attention_heads 2 \(the interrupted run used 4\)"),
        (["--block_size", "16"], r"--block_size 16 \(the interrupted run used 32\).*Resume with --block_size 32"),
        (["--max_eval_blocks", "8"], r"--max_eval_blocks 8 \(the interrupted run used 4\)"),
    ],
)
def test_pretrain_resume_with_other_data_or_model_is_refused_before_writing(runs, argv, match):
    out = runs / "pretrain"
    before = _snapshot(out)
    with pytest.raises(ValueError, match=match):
        pretrain.main(PRETRAIN + argv + ["--output_dir", str(out), "--resume_from_checkpoint", "true"])
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--num_attention_heads", "4"], r"--num_attention_heads 4 \(the interrupted run used 2\)"),
        (["--block_size", "16"], r"--block_size 16 \(the interrupted run used 32\)"),
        (["--architecture", "gpt2"], r"--architecture gpt2 \(the interrupted run used llama\)"),
    ],
)
def test_warmup_resume_with_other_data_or_model_is_refused_before_writing(tmp_path, runs, argv, match):
    out = runs / "warmup"
    before = _snapshot(out)
    with pytest.raises(ValueError, match=match):
        warmup.main(WARMUP + argv + ["--output_dir", str(out), "--resume_from_checkpoint", "last"])
    assert _snapshot(out) == before
    named = tmp_path / "other"  # a checkpoint named on the command line: checked against its own run's record
    with pytest.raises(ValueError, match=match):
        warmup.main(WARMUP + argv + ["--output_dir", str(named), "--resume_from_checkpoint",
                                     str(out / "adamw_warmup" / "checkpoint-1")])  # fmt: skip
    assert not named.exists()


def test_the_same_flags_resume(runs):
    result = pretrain.main(PRETRAIN + ["--output_dir", str(runs / "pretrain"), "--resume_from_checkpoint", "true"])
    assert (runs / "pretrain" / "checkpoint-2").is_dir() and result["perplexity"] > 0
    result = warmup.main(WARMUP + ["--output_dir", str(runs / "warmup"), "--resume_from_checkpoint", "last"])
    assert result["adamw_warmup"]["resumed_from"].endswith("checkpoint-1")


def test_a_checkpoint_resumed_into_another_folder_records_the_run_there(runs, tmp_path):
    """rv21b F4: a resume wrote no record, so after resuming a run's checkpoint into another --output_dir a later resume
    of that folder with another --block_size was accepted (with a warning that the run predated the record)."""
    other = tmp_path / "other"
    pretrain.main(PRETRAIN + ["--output_dir", str(other), "--resume_from_checkpoint",
                              str(runs / "pretrain" / "checkpoint-1")])  # fmt: skip
    assert (other / "pretrain_run.json").is_file()
    with pytest.raises(ValueError, match=r"--block_size 16 \(the interrupted run used 32\)"):
        pretrain.main(
            PRETRAIN + ["--block_size", "16", "--output_dir", str(other), "--resume_from_checkpoint", "true"]
        )


def test_a_resume_of_a_run_without_a_record_records_nothing(tmp_path):
    write_run_record(str(tmp_path / "new"), "r.json", {"block_size": 32}, resumed_from=str(tmp_path / "old" / "ckpt"))
    assert not (tmp_path / "new" / "r.json").exists()  # nothing was checked: nothing is recorded


def test_local_paths_are_compared_resolved(tmp_path, monkeypatch):
    """rv21b F5: the same --train_file given as a relative and as an absolute path was refused, and the same relative
    string naming another file (from another working directory) was accepted."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "data.txt").write_text("text")
    monkeypatch.chdir(first)
    write_run_record(str(tmp_path / "run"), "r.json", {"train_file": "data.txt", "text_column": "text"})
    check_run_record(
        str(tmp_path / "run"), "r.json", {"train_file": str(first / "data.txt"), "text_column": "text"}, "x"
    )
    monkeypatch.chdir(second)
    with pytest.raises(ValueError, match=r"--train_file .*b/data.txt \(the interrupted run used .*a/data.txt\)"):
        check_run_record(str(tmp_path / "run"), "r.json", {"train_file": "data.txt", "text_column": "text"}, "x")


@pytest.mark.parametrize("flag", ["dataset_name", "tokenizer_name", "model_name_or_path"])
def test_local_folders_of_the_other_path_flags_are_compared_resolved(tmp_path, monkeypatch, flag):
    """mu22 F3: --dataset_name, --tokenizer_name and --model_name_or_path may name a local folder and follow the same
    rule as --train_file: the same folder relative then absolute is accepted, the same relative string naming another
    folder is refused."""
    for name in ("a", "b"):
        (tmp_path / name / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    write_run_record(str(tmp_path / "run"), "r.json", {flag: "data"})
    check_run_record(str(tmp_path / "run"), "r.json", {flag: str(tmp_path / "a" / "data")}, "x")
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ValueError, match=rf"--{flag} .*b/data \(the interrupted run used .*a/data\)"):
        check_run_record(str(tmp_path / "run"), "r.json", {flag: "data"}, "x")
    # a hub id (no such local folder) stays a string compared as given
    write_run_record(str(tmp_path / "hub"), "r.json", {flag: "org/not-here"})
    check_run_record(str(tmp_path / "hub"), "r.json", {flag: "org/not-here"}, "x")


def test_symlinked_paths_are_compared_by_their_targets(tmp_path):
    """mu22 F4: a symlink retargeted to another file between the run and its resume names another file (refused);
    the same file named by its symlink at the start and by its target at the resume is accepted."""
    for name in ("v1.txt", "v2.txt"):
        (tmp_path / name).write_text(name)
    latest = tmp_path / "latest.txt"
    latest.symlink_to(tmp_path / "v1.txt")
    write_run_record(str(tmp_path / "run"), "r.json", {"train_file": str(latest)})
    check_run_record(str(tmp_path / "run"), "r.json", {"train_file": str(tmp_path / "v1.txt")}, "x")
    latest.unlink()
    latest.symlink_to(tmp_path / "v2.txt")
    with pytest.raises(ValueError, match=r"--train_file .*v2.txt \(the interrupted run used .*v1.txt\)"):
        check_run_record(str(tmp_path / "run"), "r.json", {"train_file": str(latest)}, "x")


def test_a_checkpoint_resumed_into_a_folder_of_an_earlier_record_replaces_it(runs, tmp_path):
    """rv22 F1: a folder already holding an earlier run's record (its checkpoints removed) kept it when another run's
    checkpoint was resumed into it, so later resumes of that folder were checked against the earlier run's flags: the
    flags that trained its checkpoints were refused and the earlier run's accepted."""
    other = tmp_path / "other"
    other.mkdir()
    stale = {**_load_record(runs / "pretrain"), "block_size": 16}
    (other / "pretrain_run.json").write_text(json.dumps(stale))
    pretrain.main(PRETRAIN + ["--output_dir", str(other), "--resume_from_checkpoint",
                              str(runs / "pretrain" / "checkpoint-1")])  # fmt: skip
    assert _load_record(other) == _load_record(runs / "pretrain")  # the resumed run's record, block_size 32
    # later resumes of the folder (its checkpoint-2 was trained on 32-token blocks) are checked against that run
    with pytest.raises(ValueError, match=r"--block_size 16 \(the interrupted run used 32\)"):
        pretrain.main(
            PRETRAIN + ["--block_size", "16", "--output_dir", str(other), "--resume_from_checkpoint", "true"]
        )
    pretrain.main(PRETRAIN + ["--output_dir", str(other), "--resume_from_checkpoint", "true"])  # its own flags


def test_a_resume_from_a_run_without_a_record_removes_another_runs_record_there(tmp_path, caplog):
    """rv22 F1: the record of an earlier run in the target folder would check later resumes against that run's flags;
    the resumed run has none to put in its place, so it goes (with a warning, as for a run without a record)."""
    target = tmp_path / "new"
    target.mkdir()
    (target / "r.json").write_text(json.dumps({"block_size": 16}))
    with caplog.at_level("WARNING", logger="hf_ext.recipes._common"):
        write_run_record(str(target), "r.json", {"block_size": 32}, resumed_from=str(tmp_path / "old" / "ckpt"))
    assert not (target / "r.json").exists()
    assert "removed" in caplog.text and "unchecked" in caplog.text


def test_a_checkpoint_resumed_into_a_folder_of_another_runs_checkpoints_is_refused(runs, tmp_path):
    """rv22 F1: a checkpoint of run A resumed into a folder holding run B's checkpoints mixed the two runs there (a
    later resume of the folder continued the newest of either, checked against one run's record)."""
    other = tmp_path / "other"
    shutil.copytree(runs / "pretrain" / "checkpoint-1", other / "checkpoint-1")  # an earlier run's checkpoint
    record = {**_load_record(runs / "pretrain"), "block_size": 16}
    (other / "pretrain_run.json").write_text(json.dumps(record))
    before = _snapshot(other)
    with pytest.raises(ValueError, match=r"which holds checkpoints of another run \(.*checkpoint-1\)"):
        pretrain.main(PRETRAIN + ["--output_dir", str(other), "--resume_from_checkpoint",
                                  str(runs / "pretrain" / "checkpoint-1")])  # fmt: skip
    assert _snapshot(other) == before
    # a resume within the checkpoint's own folder is that run's: nothing to refuse
    write_run_record(str(other), "pretrain_run.json", record, resumed_from=str(other / "checkpoint-1"))
    assert _load_record(other)["block_size"] == 16


def _load_record(folder):
    return json.loads((folder / "pretrain_run.json").read_text())


@pytest.mark.parametrize("recipe", ["pretrain", "warmup"])
def test_another_runs_checkpoints_in_the_output_dir_are_refused_before_the_data_is_loaded(
    runs, tmp_path, monkeypatch, recipe
):
    """rs22f: a checkpoint of one run resumed into a folder holding another run's checkpoints was refused only when the
    run record was written, after the tokenizer, the data and (pretrain) the packing: minutes on a real corpus before a
    refusal that needs none of it."""
    import hf_ext.data

    def loaded(*args, **kwargs):
        raise AssertionError("the data was loaded before the refusal")

    monkeypatch.setattr(hf_ext.data, "load_text_datasets", loaded)
    if recipe == "pretrain":
        checkpoint, other, argv = runs / "pretrain" / "checkpoint-1", tmp_path / "other", PRETRAIN
        held = other / "checkpoint-1"
    else:
        checkpoint, other, argv = runs / "warmup" / "adamw_warmup" / "checkpoint-1", tmp_path / "other", WARMUP
        held = other / "adamw_warmup" / "checkpoint-1"
    shutil.copytree(checkpoint, held)  # an earlier run's checkpoint in the folder the resume would train in
    before = _snapshot(other)
    run = pretrain.main if recipe == "pretrain" else warmup.main
    with pytest.raises(ValueError, match=r"which holds checkpoints of another run \(.*checkpoint-1\)"):
        run(argv + ["--output_dir", str(other), "--resume_from_checkpoint", str(checkpoint)])
    assert _snapshot(other) == before


def test_a_symlink_to_the_runs_own_checkpoint_resumes_that_run(runs, tmp_path):
    """rv26 F4: a resume through a link to a run's own checkpoint kept outside the run (`best -> RUN/checkpoint-1`)
    took the link's folder for the run's: refused as "holds checkpoints of another run" (the run's own), and checked
    against no record. The link's target names the run."""
    run = tmp_path / "run"
    shutil.copytree(runs / "pretrain", run)
    shutil.rmtree(run / "checkpoint-2", ignore_errors=True)  # (another test of this module may have resumed the run)
    (tmp_path / "pointers").mkdir()
    best = tmp_path / "pointers" / "best"
    best.symlink_to(run / "checkpoint-1")
    with pytest.raises(ValueError, match=r"--block_size 16 \(the interrupted run used 32\)"):  # the run's record
        pretrain.main(
            PRETRAIN + ["--block_size", "16", "--output_dir", str(run), "--resume_from_checkpoint", str(best)]
        )
    pretrain.main(PRETRAIN + ["--output_dir", str(run), "--resume_from_checkpoint", str(best)])
    assert (run / "checkpoint-2").is_dir()


def test_a_checkpoint_moved_elsewhere_and_linked_back_into_its_run_folder_resumes_that_run(runs, tmp_path):
    """rv27 F1: a run's checkpoint-N moved to other storage and linked back (`RUN/checkpoint-1 -> STORE/checkpoint-1`)
    took the link target's folder for the run's: its own --output_dir was refused as holding 'checkpoints of another
    run' (the same checkpoint), for `last` and for the named checkpoint, and the run's record went unchecked. The
    folder that holds the link, which holds the run's record, names the run."""
    run, store = tmp_path / "run", tmp_path / "store"
    shutil.copytree(runs / "pretrain", run)
    shutil.rmtree(run / "checkpoint-2", ignore_errors=True)  # (another test of this module may have resumed the run)
    store.mkdir()
    shutil.move(str(run / "checkpoint-1"), str(store / "checkpoint-1"))
    (run / "checkpoint-1").symlink_to(store / "checkpoint-1")
    with pytest.raises(ValueError, match=r"--block_size 16 \(the interrupted run used 32\)"):  # the run's record
        pretrain.main(PRETRAIN + ["--block_size", "16", "--output_dir", str(run), "--resume_from_checkpoint", "last"])
    pretrain.main(PRETRAIN + ["--output_dir", str(run), "--resume_from_checkpoint", str(run / "checkpoint-1")])
    assert (run / "checkpoint-2").is_dir()


def test_metadata_checkpoint_linked_back_into_its_sub_run_folder_names_that_run(tmp_path):
    """rv27 F1, the metadata recipe's layout (`OUT/url_conditioned/checkpoint-N`, the record in OUT): a checkpoint
    linked back from other storage names its run and OUT; a link kept elsewhere names the run it points into."""
    from hf_ext.recipes.metadata_pretrain import RUN_DATA_FILE, _checkpoint_run_folder, checkpoint_run

    out, store, pointers = tmp_path / "out", tmp_path / "store", tmp_path / "pointers"
    for folder in (out / "url_conditioned", store / "checkpoint-3", out / "baseline" / "checkpoint-2", pointers):
        folder.mkdir(parents=True)
    (out / RUN_DATA_FILE).write_text("{}")
    linked = out / "url_conditioned" / "checkpoint-3"
    linked.symlink_to(store / "checkpoint-3")
    assert checkpoint_run(str(linked)) == "url_conditioned"
    assert _checkpoint_run_folder(str(linked), str(out)) == str(out)
    best = pointers / "best"
    best.symlink_to(out / "baseline" / "checkpoint-2")
    assert checkpoint_run(str(best)) == "baseline"
    assert _checkpoint_run_folder(str(best), str(tmp_path / "new")) == str(out)
