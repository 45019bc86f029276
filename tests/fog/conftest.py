"""`fog_two_ranks`: the FOG checks on 2 gloo ranks (tensor parallelism; FSDP2, DDP and FP8 all-gather), run in ONE
`torchrun --nproc_per_node 2` launch of tests/scripts/checks_in_turn.py that the modules checking them share
(`checks_in_turn_launch` of tests/conftest.py)."""

import pytest

#: the scripts of scripts/ that tests/scripts/checks_in_turn.py runs, in this order (scale_out's Accelerator, which
#: sets accelerate's state up, last)
TWO_RANK_CHECKS = ("tp_fog", "scale_out")


@pytest.fixture
def fog_two_ranks(checks_in_turn_launch):
    """`fog_two_ranks(check)`: `(folder, stdout)` of one of `TWO_RANK_CHECKS`, all run in ONE launch per test session
    (a launch costs each rank ~10 s of torch / transformers imports; each check used to be a launch of its own). The
    test fails, naming the check, unless both ranks finished that check."""
    return checks_in_turn_launch("fog_two_ranks", "fog", TWO_RANK_CHECKS)
