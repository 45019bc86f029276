"""cn49 audit: CubicNewtonTrainer under a multi-process launch is refused once, early and clearly.

Before, `torchrun --nproc_per_node 2` with `--use_cpu true` made every rank print CubicNewton's data-parallel warning
("CubicNewton was built in a process group of 2 processes ... `CubicNewtonTrainer` refuses more"), from the throw-away
optimizer that `CubicNewtonTrainingArguments` builds to check its options, and only then, after transformers'
`Trainer.__init__` had run, raise a terse "runs in a single process". Without `--use_cpu` on a machine without an
accelerator, accelerate saw no distributed setup (`args.world_size == 1`), so nothing refused and both ranks trained
the whole run alone into the same `--output_dir`. The arguments now refuse such a launch (the launcher's world size in
the environment) before `TrainingArguments` starts a process group, and the trainer refuses one before `Trainer`
is set up.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments

REFUSAL = "CubicNewtonTrainer runs in one process, but this run has 2"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x, labels=None):
        return {"loss": nn.functional.mse_loss(self.lin(x).squeeze(-1), labels)}


def test_arguments_refuse_a_two_process_launch_before_any_process_group_or_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun --nproc_per_node 2 sets in every rank
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=REFUSAL) as err:
            CubicNewtonTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    assert "--per_device_train_batch_size" in str(err.value)
    assert not torch.distributed.is_initialized()
    assert not [w for w in seen if "process group" in str(w.message)]


def test_trainer_refuses_a_launch_its_arguments_counted_as_one_process(tmp_path, monkeypatch):
    # torchrun without --use_cpu on a machine without an accelerator: accelerate sees no distributed setup, the
    # arguments say world_size 1, and each rank would train the whole run alone into the same output_dir
    args = CubicNewtonTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", max_steps=1)
    assert args.world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = [{"x": torch.ones(3), "labels": torch.tensor(1.0)} for _ in range(4)]
    with pytest.raises(ValueError, match=REFUSAL):
        CubicNewtonTrainer(model=Tiny(), args=args, train_dataset=data)
    assert not (tmp_path / "o").exists()


def test_one_process_still_trains(tmp_path):
    args = CubicNewtonTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", max_steps=1)
    data = [{"x": torch.ones(3), "labels": torch.tensor(1.0)} for _ in range(4)]
    trainer = CubicNewtonTrainer(model=Tiny(), args=args, train_dataset=data)
    trainer.train()
    assert trainer._cubic_optimizer()._st["step"] == 1


# extended: a torchrun launch (~20-40 s of imports per rank, minutes on a loaded machine) for a refusal that the two
# tests above check in one process
@pytest.mark.extended
@pytest.mark.distributed
@pytest.mark.parametrize("use_cpu", ["true", "false"])
def test_two_ranks_are_refused_once_each_without_the_data_parallel_warning(tmp_path, run_two_ranks, use_cpu):
    out = tmp_path / "o"
    res = run_two_ranks("tests/optim/scripts/cubic_trainer_two_ranks.py", out, use_cpu, timeout=600)
    records = [json.loads(line[5:]) for line in res.stdout.splitlines() if line.startswith("CN49 ")]
    assert sorted(r["rank"] for r in records) == [0, 1], res.stdout[-2000:]
    for r in records:
        assert r["error"] is not None and REFUSAL in r["error"], r
        assert r["warnings"] == [], r
    assert not out.exists()
