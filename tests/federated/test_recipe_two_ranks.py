"""scripts/federated.py launched on 2 gloo ranks: the simulation runs in one process, so it refuses up front on every
rank.

Before, the run finished with exit code 0 but every client step was data-parallel over --per_device_train_batch_size
blocks per rank (the same command's eval losses and exposures differed from one process), each rank recorded its own
half-batch client training losses, secret client-level DP noise differed between the ranks, and both ranks wrote
results.json, the table and the PNG (the last writer's content won).
"""

from __future__ import annotations

import pytest

TINY_FED = [
    "--configs", "lora", "--num_rounds", "1", "--local_steps", "1", "--pretrain_steps", "0", "--num_canaries", "2",
    "--replication", "2:1.0", "--prefix_lengths", "5", "--max_eval_blocks", "2", "--num_clients", "2",
    "--block_size", "32", "--window", "19", "--vocab_size", "300", "--torch_threads", "1", "--num_hidden_layers", "1",
    "--hidden_size", "16", "--intermediate_size", "32", "--num_attention_heads", "2", "--report_to", "none",
]  # fmt: skip
REFUSAL = "The federated recipe runs in one process, but it was launched on 2"


# extended: a real torchrun launch of a recipe refused by the same `refuse_multiple_processes` stays in the fast suite
# (tests/compliance/test_recipe_two_ranks.py::test_compliance_refuses_two_ranks_before_any_work), and this recipe's
# refusal and its message are checked in-process below (test_federated_refuses_a_multi_process_environment)
@pytest.mark.extended
@pytest.mark.distributed
def test_federated_refuses_two_ranks_before_any_work(tmp_path, run_two_ranks):
    out = tmp_path / "fed"
    res = run_two_ranks(
        "scripts/federated.py", *TINY_FED, "--use_cpu", "true", "--output_dir", str(out), timeout=180, check=False
    )
    assert res.returncode != 0, "the 2-rank launch ran to the end instead of being refused"
    assert REFUSAL in res.stderr and "flwr run" in res.stderr, res.stderr[-3000:]
    assert "round 0" not in res.stdout
    assert not out.exists()
    assert "terminate called" not in res.stderr


def test_federated_refuses_a_multi_process_environment(tmp_path, monkeypatch):
    """What torchrun sets for each of its 2 processes (WORLD_SIZE=2) is refused before any work or write."""
    from hf_ext.recipes.federated import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "fed"
    with pytest.raises(ValueError, match=REFUSAL) as refused:
        main([*TINY_FED, "--use_cpu", "true", "--output_dir", str(out)])
    assert "flwr run" in str(refused.value)
    assert not out.exists()
