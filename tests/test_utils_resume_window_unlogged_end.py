"""A resumed `train()` whose restored loss window is still open at its end reports the mean of its own steps.

The restore takes the window's mean over the processes out of the running total, which a log adds back (transformers
gathers the mean there); but a `train()` that ends before any log since the restore has transformers add each
process's own leftover, so on a process whose window differed from the mean (every rank of a multi-process run)
`training_loss` was off by (own window - mean) / steps: 2.4679 instead of 2.5135 on rank 0 of a 2-rank resume."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from hf_ext.utils.resume import LOSS_WINDOW_NAME

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
from loss_window_unlogged_end import _trainer  # noqa: E402  (the 2-rank check's builder, one process here)


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_a_resume_ending_before_any_log_reports_the_mean_of_its_own_steps(tmp_path, shift):
    _trainer(str(tmp_path), logging_steps=100)[0].train()  # no log in the run: checkpoint-2's window holds steps 1-2
    # one process stands for a rank whose window differs from the mean over the ranks (as a second rank makes it)
    path = tmp_path / "checkpoint-2" / LOSS_WINDOW_NAME.format(0)
    record = json.loads(path.read_text())
    record["tr_loss_mean"] = record["tr_loss"] + shift
    path.write_text(json.dumps(record))
    resumed, losses = _trainer(str(tmp_path), logging_steps=100)
    out = resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert len(losses) == 2
    assert math.isclose(out.training_loss, sum(losses) / 2, rel_tol=1e-6), (out.training_loss, losses)  # -0.25 off


@pytest.mark.distributed
def test_two_ranks_report_the_mean_of_the_call_with_and_without_a_log_before_the_end(run_two_ranks, tmp_path):
    run_two_ranks("tests/scripts/loss_window_unlogged_end.py", tmp_path, timeout=300)
    result = json.loads((tmp_path / "loss_window_unlogged_end.json").read_text())
    assert result["world_size"] == 2
    ranks = result["ranks"]
    for rank in ranks:
        # no log before the end: every loss of the call is the rank's own
        row = rank["100"]
        assert math.isclose(row["training_loss"], sum(row["losses"]) / 2, rel_tol=1e-6), row
    step3_mean = sum(rank["3"]["losses"][0] for rank in ranks) / 2
    for rank in ranks:
        # the log at step 3 averages it over the ranks; step 4, after the last log, is the rank's own
        row = rank["3"]
        assert math.isclose(row["training_loss"], (step3_mean + row["losses"][1]) / 2, rel_tol=1e-6), row
    assert ranks[0]["100"]["losses"] != ranks[1]["100"]["losses"]  # the ranks saw other batches
