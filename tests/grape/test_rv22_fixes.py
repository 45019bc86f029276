"""rv22 findings in the grape recipe's run record (`grape_run.json`).

F1: a checkpoint of one run resumed into an --output_dir holding the checkpoints of another run trained beside them
(a later resume of that folder continued the newest of either run, checked against one run's record); it is refused
before any work.
"""

import json
import os
import shutil

import pytest

from hf_ext.recipes.grape import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
RECIPE = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
          "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
          "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1", "--reweight_tasks_every", "1",
          "--train_file", "src.jsonl", "--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1",
          "--seed", "3", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip


def _write_data(folder):
    with open(folder / "src.jsonl", "w") as f:
        for i in range(80):
            text = " ".join(WORDS[(i + j) % 12] for j in range(60))
            f.write(json.dumps({"text": text, "domain": ["d1", "d2"][i % 2]}) + "\n")
    (folder / "tgt.txt").write_text("\n".join(" ".join(WORDS[(i * 3 + j) % 12] for j in range(80)) for i in range(20)))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 2-step run with --target_files t=tgt.txt (relative), killed after step 1; returns (data folder, run)."""
    root = tmp_path_factory.mktemp("grape_rv22")
    _write_data(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main([*RECIPE, "--target_files", "t=tgt.txt", "--output_dir", str(root / "run")])
    finally:
        os.chdir(cwd)
    shutil.rmtree(root / "run" / "checkpoint-2")
    return root, root / "run"


def _snapshot(root):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files}


def test_a_checkpoint_resumed_into_a_folder_of_another_runs_checkpoints_is_refused_before_writing(
    interrupted, tmp_path, monkeypatch
):
    root, run = interrupted
    monkeypatch.chdir(root)
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoint-1", other / "checkpoint-1")  # another run's checkpoint left in the folder
    before = _snapshot(other)
    with pytest.raises(ValueError, match=r"is resumed into --output_dir .*which holds checkpoints of another run"):
        main([*RECIPE, "--target_files", "t=tgt.txt", "--output_dir", str(other), "--resume_from_checkpoint",
              str(run / "checkpoint-1")])  # fmt: skip
    assert _snapshot(other) == before
