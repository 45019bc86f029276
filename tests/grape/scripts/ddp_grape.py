"""Two-rank GRAPE run: every rank must compute the same weights. Launched by tests/grape/test_distributed.py.

Besides the final weights it checks, at every update and before rank 0's broadcast guard, that each cross-rank average
(mixture/target gradients and the dot products, norms and losses) is the mean of the ranks' own values, and that the
weights each rank computed agree.

Usage: torchrun --nproc_per_node 2 ddp_grape.py <output_dir>
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
    """Records every cross-rank average (input, output) and every tensor handed to rank 0's broadcast guard."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.averages: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pre_broadcast: list[torch.Tensor] = []

    def _mean_over_ranks(self, tensor):
        out = super()._mean_over_ranks(tensor)
        self.averages.append((tensor.detach().double().clone(), out.detach().double().clone()))
        return out

    def _broadcast(self, tensor):
        self.pre_broadcast.append(tensor.detach().double().clone())
        return super()._broadcast(tensor)


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def check_averaging(trainer: RecordingGrapeTrainer) -> dict:
    """Before the broadcast guard: every average is the mean of the ranks' inputs, and the weights agree."""
    mean_errors, local_differs = [], []
    for local, averaged in trainer.averages:
        inputs = _gather(local)
        expected = torch.stack(inputs).mean(0)
        mean_errors.append(float((averaged - expected).abs().max() / (expected.abs().max() + 1e-12)))
        local_differs.append(not torch.equal(inputs[0], inputs[1]))
        outputs = _gather(averaged)
        mean_errors.append(float((outputs[0] - outputs[1]).abs().max()))
    pre = [float((g[0] - g[1]).abs().max()) for g in map(_gather, trainer.pre_broadcast)]
    return {
        "n_averages": len(trainer.averages),
        "n_broadcasts": len(trainer.pre_broadcast),
        "max_mean_error": max(mean_errors),
        "local_inputs_differ": local_differs,
        "max_pre_broadcast_diff": max(pre),
    }


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    train, targets = synthetic_mixture()
    args = quick_grape_args(
        output_dir,
        max_steps=6,
        learning_rate=5e-3,
        reweight_domains_every=2,
        reweight_tasks_every=2,
        logging_steps=100,
        seed=42,  # transformers' default, as this run always used
    )
    trainer = RecordingGrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.train()
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected two ranks"
    st = trainer.mixture_state
    local = torch.cat(
        [st.domain_weights, st.task_weights, st.average_domain_weights(), torch.tensor([float(st.domain_updates)])]
    )
    gathered = [torch.zeros_like(local) for _ in range(2)]
    dist.all_gather(gathered, local)
    averaging = check_averaging(trainer)
    fingerprints = rank_fingerprints(trainer.model)  # model weights must be identical on both ranks too
    stats = trainer.last_local_stats["domain"]
    gathered_stats = [torch.zeros_like(stats) for _ in range(2)]
    dist.all_gather(gathered_stats, stats)
    if dist.get_rank() == 0:
        result = {
            "weights": [g.tolist() for g in gathered],
            "local_stats": [g.tolist() for g in gathered_stats],
            "trajectory": st.trajectory,
            "averaging": averaging,
            "model_fingerprints": fingerprints,
        }
        with open(os.path.join(output_dir, "ddp_result.json"), "w") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
