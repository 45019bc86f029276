"""Two-rank GRAPE run resumed inside epoch 1: it must draw the uninterrupted run's batches. Launched by
tests/grape/test_distributed.py.

8 steps over 20-sample sampler epochs (2 ranks x 4 rows: 3 steps per epoch), a checkpoint at step 4 (inside epoch 1).
Each rank records, for every step it trains, the sampler's epoch and position and the batch it got; rank 0 writes
them with the mixture schedule, the final weights and the model fingerprints.

Usage: torchrun --nproc_per_node 2 ddp_grape_resume.py <output_dir> <resume: 0|1>
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer
from hf_ext.utils import rank_fingerprints, shutdown_distributed


class RecordingGrapeTrainer(GrapeTrainer):
    """Records the sampler's epoch/position and the batch of every training step."""

    def training_step(self, model, inputs, *args, **kwargs):
        sampler = self._mixture_sampler
        self.steps.append(
            {
                "step": self.state.global_step + 1,
                "sampler_epoch": sampler.epoch,
                "sampler_position": sampler.position,
                "batch": inputs["input_ids"].tolist(),
            }
        )
        return super().training_step(model, inputs, *args, **kwargs)


def main(out: str, resume: bool) -> None:
    torch.set_num_threads(1)
    train, targets = synthetic_mixture()
    args = quick_grape_args(
        out, max_steps=8, learning_rate=5e-3, reweight_domains_every=1, reweight_tasks_every=2, logging_steps=1,
        seed=42, domain_step_size=50.0, save_strategy="steps", save_steps=4, samples_per_epoch=20,
    )  # fmt: skip
    trainer = RecordingGrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    assert dist.get_world_size() == 2
    trainer.steps = []
    trainer.train(resume_from_checkpoint=os.path.join(out, "checkpoint-4") if resume else None)
    state = trainer.mixture_state
    mine = {
        "steps": [s for s in trainer.steps if s["step"] > 4],
        "schedule": [[int(p), w.tolist()] for p, w in state.schedule],
        "domain_weights": state.domain_weights.tolist(),
        "task_weights": state.task_weights.tolist(),
        "average_domain_weights": state.average_domain_weights().tolist(),
    }
    fingerprints = rank_fingerprints(trainer.model)
    ranks = [None, None]
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        name = "resumed.json" if resume else "uninterrupted.json"
        with open(os.path.join(out, name), "w") as fh:
            json.dump({"ranks": ranks, "model_fingerprints": fingerprints}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
    shutdown_distributed()
