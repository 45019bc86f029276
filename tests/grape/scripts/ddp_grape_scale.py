"""GrapeTrainer's training stream on 2 ranks x 2 sequences is one process's at 4 (the test runs that one,
`run(..., batch_size=4)`): `MixtureSampler` draws one index stream, which accelerate shards by batch, so each step's
global batch is rank 0's rows then rank 1's, the one-process batch; the parameters agree. `uniform` weights (the
reweighting methods' weights legitimately differ: each rank draws its own reweighting minibatches, so 2 ranks average
twice the rows of one process, see docs/grape.md "Identical weights across ranks").

Usage: run by ddp_grape_all.py into `<output_dir>/scale`: every rank writes `steps_rank<rank>.json` (per step: the
sampler position and the batch's `input_ids`) and `params_rank<rank>.pt` (every parameter, flattened, in order)."""

import json
import os

import torch
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


class RecordingGrapeTrainer(GrapeTrainer):
    """Records the batch of every training step."""

    def training_step(self, model, inputs, *args, **kwargs):
        self.steps.append([self.state.global_step + 1, inputs["input_ids"].tolist()])
        return super().training_step(model, inputs, *args, **kwargs)


def run(out: str, batch_size: int):
    """6 uniform-mixture steps at `batch_size` sequences per process; writes this process's files into `out` and
    returns `(steps, parameters)`."""
    torch.set_num_threads(1)
    train, targets = synthetic_mixture()
    args = quick_grape_args(
        out, max_steps=6, per_device_train_batch_size=batch_size, learning_rate=5e-3, lr_scheduler_type="constant",
        logging_steps=100, seed=42, reweight_method="uniform",
    )  # fmt: skip
    trainer = RecordingGrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.steps = []
    trainer.train()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    rank = trainer.args.process_index
    with open(os.path.join(out, f"steps_rank{rank}.json"), "w") as fh:
        json.dump(trainer.steps, fh)
    torch.save(params, os.path.join(out, f"params_rank{rank}.pt"))
    return trainer.steps, params


def main(out: str) -> None:
    assert int(os.environ.get("WORLD_SIZE", "1")) == 2, "expected two ranks"
    run(out, 2)
