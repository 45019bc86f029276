"""`train_loss` of a data-parallel run equals one process at the same global batch, also when `--logging_steps` does
not divide `--max_steps`.

transformers gathers (averages over the ranks) each logged loss, but adds the losses of the steps after the last log
to `training_loss` with the rank's own values, so pretrain's `train_loss` (and grape's, layer_parallel's
`finetune_train_loss`) was rank 0's tail: 6.231852 on 2 ranks against 6.229505 for one process (audit rc13 #3).

The same on a real 2-rank launch of the recipe: test_pretrain_two_ranks_train_loss_equals_one_process_at_double_batch
in tests/test_two_rank_checks.py (one launch shared with other 2-rank checks).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hf_ext.recipes._common import whole_run_train_loss


class _Ranks:
    """An accelerator whose `reduce(mean)` averages this rank's value with the other ranks' given values."""

    def __init__(self, others):
        self.others = others
        self.reduced = []

    def reduce(self, tensor, reduction):
        assert reduction == "mean"
        self.reduced.append(tensor.item())
        return (tensor + sum(self.others)) / (1 + len(self.others))


def _trainer(logs, global_step, initial_step, others):
    return SimpleNamespace(
        state=SimpleNamespace(log_history=logs, global_step=global_step),
        _initial_global_step=initial_step,
        args=SimpleNamespace(world_size=1 + len(others), device=torch.device("cpu")),
        accelerator=_Ranks(others),
    )


def test_the_unlogged_tail_is_averaged_over_the_ranks():
    # logs at 3 (mean 6.0 over steps 1-3, gathered); steps 4-5 are this rank's tail, summing to 2 * 5.0 here and to
    # 2 * 4.0 on the other rank: the run's mean is (3 * 6.0 + 2 * 4.5) / 5 on every rank
    logs = [{"step": 3, "loss": 6.0}, {"step": 3, "eval_loss": 1.0}]
    trainer = _trainer(logs, 5, 0, [8.0])
    this_rank = (3 * 6.0 + 2 * 5.0) / 5  # what transformers returns on this rank
    assert whole_run_train_loss(trainer, this_rank) == pytest.approx((3 * 6.0 + 2 * 4.5) / 5, rel=1e-12)
    assert trainer.accelerator.reduced == [pytest.approx(10.0)]
    # logged at the last step: nothing is rank-local, no collective
    trainer = _trainer([{"step": 2, "loss": 6.0}, {"step": 4, "loss": 5.0}], 4, 0, [123.0])
    assert whole_run_train_loss(trainer, 5.5) == 5.5 and trainer.accelerator.reduced == []
    # one process: transformers' value as it is
    assert whole_run_train_loss(_trainer(logs, 5, 0, []), this_rank) == this_rank


def test_after_a_resume_only_this_calls_tail_is_averaged():
    # resumed at 4 (logs at 2 and 4 restored), this call logs at 6 and ends at 7: the tail is step 7 only
    logs = [{"step": 2, "loss": 8.0}, {"step": 4, "loss": 7.0}, {"step": 6, "loss": 6.0}]
    this_rank = (2 * 6.0 + 1 * 5.0) / 3
    trainer = _trainer(logs, 7, 4, [3.0])
    assert whole_run_train_loss(trainer, this_rank) == pytest.approx((2 * 8.0 + 2 * 7.0 + 2 * 6.0 + 4.0) / 7)
    assert trainer.accelerator.reduced == [pytest.approx(5.0)]
