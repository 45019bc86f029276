"""`fp8_two_ranks`: the FP8 checks on 2 gloo ranks (tensor parallelism, amax reduction, the monitor under DDP), run in
ONE `torchrun --nproc_per_node 2` launch of tests/scripts/checks_in_turn.py that the modules checking them share
(`checks_in_turn_launch` of tests/conftest.py)."""

import pytest

#: the scripts of scripts/ that tests/scripts/checks_in_turn.py runs, in this order (ddp_emulated's Trainer, which sets
#: accelerate's state up, last)
TWO_RANK_CHECKS = ("tp_fp8", "ddp_monitor", "ddp_emulated")


@pytest.fixture
def fp8_two_ranks(checks_in_turn_launch):
    """`fp8_two_ranks(check)`: `(folder, stdout)` of one of `TWO_RANK_CHECKS`, all run in ONE launch per test session
    (a launch costs each rank ~10 s of torch / transformers / torchao imports; each check used to be a launch of its
    own). The test fails, naming the check, unless both ranks finished that check."""
    return checks_in_turn_launch("fp8_two_ranks", "fp8", TWO_RANK_CHECKS)
