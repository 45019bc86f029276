"""GRAPE recipe: duplicate target-task names, checkpoints of another run in --output_dir (fresh rerun / resume
past --max_steps), a bad --mixture_file and null domains, all refused before any work."""

import json

import pytest
from grape_synthetic import parse_grape_recipe as _parse
from grape_synthetic import without_reweighting

TINY = ["--vocab_size", "300", "--per_device_train_batch_size", "4", "--hidden_size", "32", "--intermediate_size",
        "64", "--num_attention_heads", "2", "--reweight_domains_every", "2", "--reweight_tasks_every", "2"]  # fmt: skip


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    # a checkpoint of this recipe holds a mixture state (of a grape run, the default --reweight_method)
    (folder / "grape_state.json").write_text(json.dumps({"reweight_method": "grape"}))
    (folder / "grape_state.safetensors").write_bytes(b"")


@pytest.mark.parametrize(
    "flag, value",
    [("--target_domains", "a=networking,a=filesystem"), ("--target_files", "qa=qa.jsonl,qa=code.txt")],
)
def test_parse_pairs_refuses_a_task_named_twice(flag, value):
    """The second task used to replace the first silently (a dict keyed by name)."""
    from hf_ext.recipes.grape import _parse_pairs

    with pytest.raises(ValueError, match=f"{flag} names the target task 'q?a' twice"):
        _parse_pairs(value, flag)


def test_duplicate_target_domains_refused_by_validation(tmp_path):
    from hf_ext.recipes.grape import validate_args

    parsed = _parse([*TINY, "--target_domains", "a=networking,a=filesystem", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--target_domains names the target task 'a' twice"):
        validate_args(*parsed)


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    """A fresh rerun used to keep the earlier run's checkpoint-N folders; a later bare --resume_from_checkpoint then
    continued that other run."""
    from hf_ext.recipes.grape import validate_args

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-8", 8)
    parsed = _parse([*TINY, "--max_steps", "6", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="checkpoint-8 exists.*--resume_from_checkpoint.*another --output_dir"):
        validate_args(*parsed)
    cmp_out = tmp_path / "cmp"  # --compare_methods: each method's folder
    _checkpoint(cmp_out / "uniform" / "checkpoint-2", 2)
    parsed = _parse([*TINY, "--compare_methods", "grape,uniform", "--output_dir", str(cmp_out)])
    with pytest.raises(ValueError, match="uniform.checkpoint-2 exists"):
        validate_args(*parsed)


def test_resume_past_max_steps_is_refused(tmp_path):
    """The audit's case: the newest checkpoint in --output_dir is another run's step 9, this run's --max_steps is 6
    (it used to resume and end at global_step 9)."""
    from hf_ext.recipes.grape import validate_args

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-3", 3)
    _checkpoint(out / "checkpoint-9", 9)
    parsed = _parse([*TINY, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"])
    with pytest.raises(ValueError, match="global_step 9.*--max_steps 6"):
        validate_args(*parsed)
    parsed = _parse([*TINY, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint",
                     str(out / "checkpoint-3")])  # fmt: skip
    validate_args(*parsed)  # a checkpoint of this run is fine


def test_resume_of_a_finished_run_is_accepted(tmp_path):
    """A checkpoint at --max_steps is this run's, finished (stopped before its results were written): the recipe
    restores it (tests/test_recipes_resume.py) rather than refusing it."""
    from hf_ext.recipes.grape import validate_args

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-6", 6)
    validate_args(*_parse([*TINY, "--max_steps", "6", "--output_dir", str(out), "--resume_from_checkpoint"]))
    validate_args(*_parse([*TINY, "--max_steps", "7", "--output_dir", str(out), "--resume_from_checkpoint"]))


def _no_tokenizer(*args, **kwargs):
    raise AssertionError("the tokenizer was built before the bad argument was found")


@pytest.mark.parametrize(
    "mixture, match",
    [
        (None, "--mixture_file: mixture file .* does not exist"),
        ({"web": 0.5, "code": 0.5}, "--mixture_file .* must name exactly"),
    ],
)
def test_a_bad_mixture_file_is_refused_before_any_work_also_when_comparing(tmp_path, monkeypatch, mixture, match):
    """With --compare_methods the file was read only when the trainer of its first method was built: after the
    uniform baseline had trained and been saved."""
    import hf_ext.data
    from hf_ext.recipes.grape import main

    monkeypatch.setattr(hf_ext.data, "build_tokenizer", _no_tokenizer)
    path = tmp_path / "mix.json"
    if mixture is not None:
        path.write_text(json.dumps(mixture))
    out = tmp_path / "out"
    for methods in (["--compare_methods", "uniform,fixed"], ["--compare_methods", "uniform,grape"], []):
        with pytest.raises(ValueError, match=match):
            main([*without_reweighting(TINY), "--max_steps", "2", *methods, "--mixture_file", str(path), "--output_dir", str(out)]
                 + ([] if methods else ["--reweight_method", "fixed"]))  # fmt: skip
        assert not out.exists()


def test_a_null_domain_is_refused_naming_the_flag_and_the_row(tmp_path, monkeypatch):
    """A JSON null (or an empty CSV cell) in the domain column used to become a source domain named "None", which was
    reweighted and exported in mixture.json."""
    import hf_ext.data
    from hf_ext.grape.data import domain_rows
    from hf_ext.recipes.grape import main

    rows = [{"text": f"text {i} " * 40, "domain": [None, "web", "code"][i % 3 if i != 2 else 0]} for i in range(9)]
    with pytest.raises(ValueError, match=r"domain column 'domain' \(--domain_column\) is null in 4 of 9 rows, the first "
                       "at row 0"):  # fmt: skip
        from datasets import Dataset

        domain_rows(Dataset.from_list(rows), "domain")
    sources = tmp_path / "sources.jsonl"
    sources.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.txt").write_text("target text " * 200 + "\n")
    monkeypatch.setattr(hf_ext.data, "build_tokenizer", _no_tokenizer)
    argv = [*without_reweighting(TINY), "--max_steps", "2", "--train_file", str(sources)]
    argv += ["--target_files", f"t={tmp_path / 't.txt'}"]
    (tmp_path / "mix.json").write_text(json.dumps({"web": 0.5, "code": 0.5}))
    mix = ["--reweight_method", "fixed", "--mixture_file", str(tmp_path / "mix.json")]
    for extra in (["--source_domains", "web,code"], mix):
        with pytest.raises(ValueError, match=r"--domain_column\) is null in 4 of 9 rows"):
            main([*argv, *extra, "--output_dir", str(tmp_path / "out")])
    monkeypatch.undo()  # without either flag the sources are read after the tokenizer: still before any result goes
    out = tmp_path / "out"
    out.mkdir()
    (out / "grape_results.json").write_text("from an earlier run")
    with pytest.raises(ValueError, match=r"--domain_column\) is null in 4 of 9 rows"):
        main([*argv, "--output_dir", str(out)])
    assert (out / "grape_results.json").read_text() == "from an earlier run"
