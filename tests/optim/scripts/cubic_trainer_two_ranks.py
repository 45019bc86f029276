"""CubicNewtonTrainingArguments + CubicNewtonTrainer under `torchrun --nproc_per_node 2`: each rank prints one JSON
line with what it raised and the warnings it saw (tests/optim/test_cn49_fixes.py)."""

import json
import os
import sys
import warnings

import torch
from torch import nn

from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x, labels=None):
        return {"loss": nn.functional.mse_loss(self.lin(x).squeeze(-1), labels)}


def main(out: str, use_cpu: bool) -> None:
    error = None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            args = CubicNewtonTrainingArguments(output_dir=out, use_cpu=use_cpu, max_steps=1, report_to="none")
            data = [{"x": torch.ones(3), "labels": torch.tensor(1.0)} for _ in range(4)]
            CubicNewtonTrainer(model=Tiny(), args=args, train_dataset=data).train()
        except ValueError as err:
            error = str(err)
    record = {
        "rank": int(os.environ.get("RANK", "0")),
        "error": error,
        "warnings": [str(w.message) for w in seen if "CubicNewton" in str(w.message)],
    }
    print("CN49 " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "true")
