"""Two-rank GRAPE run: every rank must end with the same weights. Launched by tests/grape/test_distributed.py.

Usage: torchrun --nproc_per_node 2 ddp_grape.py <output_dir>
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from grape_synthetic import synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeConfig, GrapeTrainer
from hf_ext.utils import shutdown_distributed


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    train, targets = synthetic_mixture()
    args = GrapeConfig(
        output_dir=output_dir,
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        reweight_domains_every=2,
        reweight_tasks_every=2,
        reweight_batch_size=4,
        reweight_mini_batch_size=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=100,
    )
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.train()
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected two ranks"
    st = trainer.mixture_state
    local = torch.cat(
        [st.domain_weights, st.task_weights, st.average_domain_weights(), torch.tensor([float(st.domain_updates)])]
    )
    gathered = [torch.zeros_like(local) for _ in range(2)]
    dist.all_gather(gathered, local)
    stats = trainer.last_local_stats["domain"]
    gathered_stats = [torch.zeros_like(stats) for _ in range(2)]
    dist.all_gather(gathered_stats, stats)
    if dist.get_rank() == 0:
        result = {
            "weights": [g.tolist() for g in gathered],
            "local_stats": [g.tolist() for g in gathered_stats],
            "trajectory": st.trajectory,
        }
        with open(os.path.join(output_dir, "ddp_result.json"), "w") as fh:
            json.dump(result, fh)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
