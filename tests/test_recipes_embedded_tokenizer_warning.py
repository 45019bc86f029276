"""Without a tokenizer flag, the recipes tokenize with the BPE hf_ext trains on its embedded corpus (Python's docs),
also when the data is the user's (`--train_file`, `--dataset_name`, grape's `--target_files`): a tokenizer that never
saw that data, silently (e.g. another language falls back to byte pieces). It is now said, with the flag to pass
(transformers' run_clm refuses to train a tokenizer at all). Each run stops at the tokenizer build."""

from __future__ import annotations

import logging

import pytest

import hf_ext.data as data_module


class _Built(Exception):
    pass


@pytest.fixture
def stop_at_build(monkeypatch):
    def fake(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(data_module, "build_tokenizer", fake)


def _run(main, argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(_Built):
        main(argv)
    return caplog.text


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Ein Dokument auf Deutsch.\n\nNoch eines, mit Umlauten: äöü.\n", encoding="utf-8")
    return str(path)


COMMON = ["--use_cpu", "true", "--report_to", "none", "--max_steps", "1"]


def test_pretrain_warns_that_the_users_file_gets_the_corpus_tokenizer(stop_at_build, caplog, text_file, tmp_path):
    from hf_ext.recipes.pretrain import main

    text = _run(main, [*COMMON, "--train_file", text_file, "--output_dir", str(tmp_path / "a")], caplog)
    assert f"--train_file {text_file!r} will be tokenized with the byte-level BPE" in text
    assert "Pass --tokenizer_name" in text
    assert "BPE" not in _run(main, [*COMMON, "--output_dir", str(tmp_path / "b")], caplog)  # the corpus itself


def test_layer_parallel_warns_and_names_its_own_fix(stop_at_build, caplog, text_file, tmp_path):
    from hf_ext.recipes.layer_parallel import main

    text = _run(main, [*COMMON, "--train_file", text_file, "--output_dir", str(tmp_path / "a")], caplog)
    assert "will be tokenized with the byte-level BPE" in text and "Pass --model_name_or_path" in text
    assert "BPE" not in _run(main, [*COMMON, "--output_dir", str(tmp_path / "b")], caplog)


def test_metadata_pretrain_warns_for_a_users_file(stop_at_build, caplog, tmp_path):
    from hf_ext.recipes.metadata_pretrain import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "Ein Dokument.", "url": "https://a.example/x"}\n' * 4, encoding="utf-8")
    text = _run(main, [*COMMON, "--train_file", str(rows), "--output_dir", str(tmp_path / "a")], caplog)
    assert f"--train_file {str(rows)!r} will be tokenized" in text
    assert "BPE" not in _run(main, [*COMMON, "--output_dir", str(tmp_path / "b")], caplog)


def test_grape_warns_for_its_target_files_too(stop_at_build, caplog, tmp_path):
    from hf_ext.recipes.grape import main

    target = tmp_path / "target.txt"
    target.write_text("Ein Ziel.\n\nNoch ein Ziel.\n", encoding="utf-8")
    argv = [*COMMON, "--target_files", f"mine={target}"]
    text = _run(main, [*argv, "--output_dir", str(tmp_path / "a")], caplog)
    assert "--target_files" in text and "will be tokenized with the byte-level BPE" in text


@pytest.mark.parametrize("rank, said", [("0", True), ("1", False)])
def test_said_once_per_launch_by_global_rank_zero(stop_at_build, caplog, text_file, tmp_path, monkeypatch, rank, said):
    """Under `torchrun --nproc_per_node N` every rank printed the warning (N copies); now global rank 0 says it (the
    launcher's RANK is set before any process group exists)."""
    from hf_ext.recipes.pretrain import main

    monkeypatch.setenv("RANK", rank)
    text = _run(main, [*COMMON, "--train_file", text_file, "--output_dir", str(tmp_path / "a")], caplog)
    assert ("will be tokenized with the byte-level BPE" in text) is said


# rv51: the rank was read with accelerate's `get_int_from_env`, which raises a bare `ValueError` on a variable that is
# not an integer: a single-process run with `RANK=` left empty by a job script (which transformers and accelerate ignore
# there) stopped at the warning, before any work.
@pytest.mark.parametrize("value", ["", "x"])
def test_a_rank_variable_that_is_no_integer_does_not_stop_a_single_process_run(
    stop_at_build, caplog, text_file, tmp_path, monkeypatch, value
):
    from hf_ext.recipes.pretrain import main

    monkeypatch.setenv("RANK", value)
    text = _run(main, [*COMMON, "--train_file", text_file, "--output_dir", str(tmp_path / "a")], caplog)
    assert "will be tokenized with the byte-level BPE" in text  # no rank: said, as by rank 0


def test_an_mpi_rank_after_a_non_integer_rank_variable_is_read(
    stop_at_build, caplog, text_file, tmp_path, monkeypatch
):
    from hf_ext.recipes.pretrain import main

    monkeypatch.setenv("RANK", "")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")  # Open MPI's rank 1 of a launch: rank 0 says it
    text = _run(main, [*COMMON, "--train_file", text_file, "--output_dir", str(tmp_path / "a")], caplog)
    assert "will be tokenized with the byte-level BPE" not in text
