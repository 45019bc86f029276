"""scripts/cubic_newton.py launched on 2 gloo ranks: it runs in one process, so it refuses up front on every rank.

Before, every rank ran the whole float64 study and wrote cubic_newton_results.json and cubic_newton.png itself (each
rank also removing an earlier run's files), with nothing saying the launch was pointless. The warmup recipe is
data-parallel under the same launch (its 2-rank numbers equal one process on the same global batch) and is not
refused; its held-out loss is the main process's over every block once (a distributed evaluate() padded the last
rank's share with a repeated block, which entered the mean when the number of blocks was odd).
"""

from __future__ import annotations

import json

import pytest

TINY_CUBIC = ["--problems", "logistic", "--methods", "sgd,cn", "--batch_sizes", "1", "--oracle_budget", "8",
              "--n_samples", "50", "--n_features", "14", "--eval_points", "2"]  # fmt: skip
REFUSAL = "The cubic_newton recipe runs in one process, but it was launched on 2"


# extended: a ~20-40 s torchrun launch for a refusal that happens before any work; the fast suite keeps the same
# refusal in test_cubic_newton_refuses_a_multi_process_environment (WORLD_SIZE=2, as torchrun sets it) and 2-rank
# launches of recipes in test_warmup_two_ranks_equal_one_process_with_an_odd_number_of_eval_blocks
@pytest.mark.extended
@pytest.mark.distributed
def test_cubic_newton_refuses_two_ranks_before_any_work(tmp_path, run_two_ranks):
    out = tmp_path / "cn"
    res = run_two_ranks("scripts/cubic_newton.py", *TINY_CUBIC, "--output_dir", str(out), timeout=180, check=False)
    assert res.returncode != 0, "the 2-rank launch ran to the end instead of being refused"
    assert REFUSAL in res.stderr and "python scripts/cubic_newton.py" in res.stderr, res.stderr[-3000:]
    assert "[cubic_newton]" not in res.stdout  # no rank started the study
    assert not out.exists()
    assert "terminate called" not in res.stderr


def test_cubic_newton_refuses_a_multi_process_environment(tmp_path, monkeypatch):
    from hf_ext.recipes.cubic_newton import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "cn"
    with pytest.raises(ValueError, match=REFUSAL):
        main([*TINY_CUBIC, "--output_dir", str(out)])
    assert not out.exists()


# 5 held-out blocks: an odd number, so a distributed evaluate() pads rank 1's share with a repeat of block 0
TINY_WARMUP = ["--arms", "adamw_warmup,lion_ar_no_warmup", "--hidden_size", "32", "--intermediate_size", "64",
               "--num_attention_heads", "2", "--vocab_size", "512", "--block_size", "32", "--max_eval_blocks", "5",
               "--metrics_every", "1", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true",
               "--max_steps", "2", "--seed", "3"]  # fmt: skip


@pytest.mark.distributed
def test_warmup_two_ranks_equal_one_process_with_an_odd_number_of_eval_blocks(tmp_path, run_two_ranks):
    """2 ranks x 4 blocks against one process x 8: the same train losses, update metrics and eval loss (the eval
    loss differed by ~1e-4 with 119 held-out blocks, audit rc13 finding 5)."""
    from hf_ext.recipes.warmup import main

    one = main([*TINY_WARMUP, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")])
    res = run_two_ranks("scripts/warmup.py", *TINY_WARMUP, "--per_device_train_batch_size", "4",
                        "--output_dir", tmp_path / "two", timeout=300)  # fmt: skip
    assert res.stdout.count("[warmup] adamw_warmup: eval loss") == 2  # printed by each of the 2 ranks
    assert res.stdout.count("[warmup] final eval losses") == 1  # the main process alone reports and writes
    two = json.loads((tmp_path / "two" / "warmup_results.json").read_text())
    for arm in ("adamw_warmup", "lion_ar_no_warmup"):
        assert [s for s, _ in two[arm]["train_loss"]] == [1, 2]
        for (_, a), (_, b) in zip(one[arm]["train_loss"], two[arm]["train_loss"]):
            assert a == pytest.approx(b, abs=1e-6), arm
        assert two[arm]["eval_loss"] == pytest.approx(one[arm]["eval_loss"], abs=1e-6), arm
