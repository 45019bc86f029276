"""fl38: run-config paths of the Flower App."""

import os

import pytest


def test_run_config_paths_expand_the_home_folder(tmp_path, monkeypatch):
    """`output-path='~/...'` and `work-dir='~/...'` used to be taken literally: the ServerApp wrote its result under a
    folder named `~` in the SuperLink's working folder (and each node its state under `./~`)."""
    pytest.importorskip("flwr")
    from hf_ext.federated.flower_task import check_output_path, task_from_run_config

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    task = task_from_run_config({"output-path": "~/runs/global.safetensors", "work-dir": "~/work"})
    assert task.config["output-path"] == os.path.join(str(tmp_path), "runs", "global.safetensors")
    assert task.config["work-dir"] == os.path.join(str(tmp_path), "work")
    assert task.training_args.output_dir == os.path.join(str(tmp_path), "work")
    check_output_path(task.config["output-path"])
    assert not os.path.exists(tmp_path / "~")
