"""A multi-process `Trainer.evaluate()` of hf_ext's Trainers counts every evaluation row once: accelerate pads the
last batch of the ranks with repeated rows, and transformers' eval_loss kept their losses (2 ranks differed from one
process: pretrain's logged eval_loss, layer_parallel's finetune_eval_loss_curve)."""

import json
import os
import sys

import pytest


@pytest.mark.distributed
def test_two_rank_eval_loss_equals_one_process(tmp_path, run_two_ranks, repo_root):
    sys.path.insert(0, os.path.join(repo_root, "tests", "scripts"))
    from eval_rows_once import CASES, ROWS, eval_losses

    run_two_ranks("tests/scripts/eval_rows_once.py", tmp_path)
    two = json.loads((tmp_path / "eval_rows_once.json").read_text())
    assert two["world_size"] == 2
    rank0, rank1 = two["ranks"]
    assert rank0 == rank1  # every rank reports the same metrics
    one = eval_losses(str(tmp_path / "one"))
    assert len({round(one[c]["eval_loss"], 5) for c in CASES}) == 1  # the same model and rows in every case
    # the setup pads: transformers' own Trainer differs from one process on 2 ranks
    assert abs(rank0["plain_trainer"]["eval_loss"] - one["plain_trainer"]["eval_loss"]) > 1e-4
    for case in CASES[1:]:
        assert rank0[case]["eval_loss"] == pytest.approx(one[case]["eval_loss"], abs=1e-6), case
    assert rank0["mixin_trainer_with_metrics"]["eval_rows"] == one["mixin_trainer_with_metrics"]["eval_rows"] == ROWS
