"""Audit rv51: the embedded-corpus tokenizer warning, said by global rank 0 only since 64f88ab, read the launcher's
rank with accelerate's `get_int_from_env`, which raises a bare `ValueError` on a variable that is not an integer.
A single-process run with `RANK=` left empty by a job script (which transformers and accelerate ignore there) then
stopped at the warning, before any work."""

from __future__ import annotations

import logging

import pytest

import hf_ext.data as data_module

WARNING = "will be tokenized with the byte-level BPE"


class _Built(Exception):
    pass


@pytest.fixture
def until_tokenizer_build(monkeypatch):
    def fake(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(data_module, "build_tokenizer", fake)


def _pretrain_log(tmp_path, caplog) -> str:
    from hf_ext.recipes.pretrain import main

    path = tmp_path / "mine.txt"
    path.write_text("Ein Dokument.\n\nNoch eines.\n", encoding="utf-8")
    argv = ["--use_cpu", "true", "--report_to", "none", "--max_steps", "1", "--train_file", str(path)]
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(_Built):  # reached the tokenizer build: no error before it
        main([*argv, "--output_dir", str(tmp_path / "out")])
    return caplog.text


@pytest.mark.parametrize("value", ["", "x"])
def test_a_rank_variable_that_is_no_integer_does_not_stop_a_single_process_run(
    until_tokenizer_build, caplog, tmp_path, monkeypatch, value
):
    monkeypatch.setenv("RANK", value)
    assert WARNING in _pretrain_log(tmp_path, caplog)  # no rank: said, as by rank 0


def test_an_mpi_rank_after_a_non_integer_rank_variable_is_read(until_tokenizer_build, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")  # Open MPI's rank 1 of a launch: rank 0 says it
    assert WARNING not in _pretrain_log(tmp_path, caplog)
