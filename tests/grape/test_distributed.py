"""Two gloo ranks on CPU compute identical mixture weights (before the broadcast guard) from different minibatches."""

from __future__ import annotations

import json

import pytest

_LAUNCH: dict = {}


@pytest.fixture
def ddp_runs(tmp_path_factory, run_two_ranks):
    """The folder of ONE `torchrun` launch of scripts/ddp_grape_all.py, shared by this module's tests (each check used
    to be a launch of its own; a launch costs each rank ~10 s of imports): `weights/` holds ddp_grape.py's result,
    `resume/` the uninterrupted and the resumed run of ddp_grape_resume.py."""
    if "out" not in _LAUNCH:
        out = tmp_path_factory.mktemp("ddp_grape")
        run_two_ranks("tests/grape/scripts/ddp_grape_all.py", out)  # asserts the launch exited with 0
        _LAUNCH["out"] = out
    return _LAUNCH["out"]


@pytest.mark.distributed
def test_two_ranks_end_with_identical_weights(ddp_runs):
    result = json.loads((ddp_runs / "weights" / "ddp_result.json").read_text())
    fp0, fp1 = result["model_fingerprints"]
    assert fp0 == fp1  # the model's weights are identical on both ranks
    rank0, rank1 = result["weights"]
    assert rank0 == rank1  # bitwise identical weights, averages and update counts
    assert rank0[-1] == 3.0
    assert rank0[:3] != pytest.approx([1 / 3] * 3)  # the weights did move
    # Each rank measured its own minibatches: the local statistics differ before averaging.
    assert result["local_stats"][0] != result["local_stats"][1]
    # Before the broadcast guard: 3 task + 3 domain updates, each averaging a gradient and the statistics ...
    averaging = result["averaging"]
    assert averaging["n_averages"] == 12 and averaging["n_broadcasts"] == 6
    assert all(averaging["local_inputs_differ"])
    # ... every average is the mean over ranks (and the same on both), and the ranks computed the same weights
    assert averaging["max_mean_error"] < 1e-6
    assert averaging["max_pre_broadcast_diff"] < 1e-12


@pytest.mark.distributed
def test_two_rank_resume_inside_epoch_one_equals_uninterrupted_run(ddp_runs):
    # Under DDP the resumed epoch's loader is SkipBatchSampler(BatchSamplerShard(BatchSampler(MixtureSampler))), which
    # accelerate's set_epoch does not reach: the MixtureSampler stayed at epoch 0 and replayed epoch 0's draws, and the
    # updates of that epoch were recorded at stale schedule positions. The resume is a new model and trainer in the
    # launch that ran the uninterrupted run (its RNG states come from checkpoint-4, as in a new process).
    full = json.loads((ddp_runs / "resume" / "uninterrupted.json").read_text())
    resumed = json.loads((ddp_runs / "resume" / "resumed.json").read_text())
    for rank in (0, 1):
        a, b = full["ranks"][rank], resumed["ranks"][rank]
        assert [s["step"] for s in a["steps"]] == [s["step"] for s in b["steps"]] == [5, 6, 7, 8]
        assert [s["sampler_epoch"] for s in a["steps"]] == [1, 1, 2, 2]  # steps 5-6 are inside epoch 1
        for x, y in zip(a["steps"], b["steps"]):
            assert (y["sampler_epoch"], y["sampler_position"]) == (x["sampler_epoch"], x["sampler_position"])
            assert y["batch"] == x["batch"], f"rank {rank} step {x['step']}: other sequences than the full run"
        assert b["schedule"] == a["schedule"]  # every update at the same sampler position with the same weights
        for key in ("domain_weights", "task_weights", "average_domain_weights"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert full["ranks"][0]["steps"][0]["batch"] != full["ranks"][1]["steps"][0]["batch"]  # each rank its own rows
    fp0, fp1 = resumed["model_fingerprints"]
    assert fp0 == fp1  # the ranks' models agree and equal the uninterrupted run's
    assert fp0 == pytest.approx(full["model_fingerprints"][0], rel=1e-6)


@pytest.mark.distributed
def test_two_ranks_train_the_one_process_stream_at_twice_the_batch(ddp_runs, repo_root, tmp_path):
    """2 ranks x 2 sequences (scripts/ddp_grape_scale.py, uniform mixture): every step's global batch, rank 0's rows
    then rank 1's, is the batch one process draws at 4 sequences, and the parameters agree (5.9e-7 apart: float32
    sums in another order); both ranks hold the same parameters."""
    import os
    import sys

    import torch

    sys.path.insert(0, os.path.join(repo_root, "tests", "grape", "scripts"))
    from ddp_grape_scale import run

    out = ddp_runs / "scale"
    ranks = [json.loads((out / f"steps_rank{r}.json").read_text()) for r in (0, 1)]
    params = [torch.load(out / f"params_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(params[0], params[1])
    steps, one = run(str(tmp_path), 4)
    assert [s for s, _ in steps] == [s for s, _ in ranks[0]] == [s for s, _ in ranks[1]] == [1, 2, 3, 4, 5, 6]
    for (step, batch), (_, first), (_, second) in zip(steps, *ranks, strict=True):
        assert first + second == batch, f"step {step}: the ranks trained other rows than one process"
    assert first != second  # each rank its own rows
    torch.testing.assert_close(params[0], one, rtol=0, atol=1e-5)
    assert (params[0] - one).norm() / one.norm() < 1e-6
