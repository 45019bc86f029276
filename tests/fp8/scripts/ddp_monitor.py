"""2 gloo ranks: each rank feeds different data (rank 1 has an outlier); the KurtosisMonitor pools the statistics
over ranks, so both ranks see the same values and the health callback takes the same decision on both."""

import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from transformers import TrainerControl

from hf_ext.fp8 import Fp8HealthCallback, KurtosisMonitor, kurtosis
from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json


def main(out_dir: str) -> None:
    if not dist.is_initialized():  # tests/scripts/checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=48)).eval()  # fmt: skip
    seen = {}

    def outlier(module, args):
        x = args[0].clone()
        if rank == 1:
            x[:, :, 0] = x[:, :, 0] * 1e3
        seen["x"] = x
        return (x,)

    model.model.layers[1].self_attn.q_proj.register_forward_pre_hook(outlier)
    monitor = KurtosisMonitor(model, sites=["qkv_input"])
    torch.manual_seed(100 + rank)  # different data per rank
    ids = torch.randint(0, 64, (3, 8))
    with torch.no_grad(), monitor.active():
        model(ids)
    stats = monitor.collect()
    local = kurtosis(seen["x"]).tolist()  # per-sample, this rank only
    gathered_local = [None] * world
    dist.all_gather_object(gathered_local, local)
    pooled = sum(sum(v) for v in gathered_local) / sum(len(v) for v in gathered_local)
    local_means = [sum(v) / len(v) for v in gathered_local]
    threshold = (min(local_means) + pooled) / 2  # above the quiet rank's own value, below the pooled one
    cb = Fp8HealthCallback(every_n_steps=1, action="stop", absolute_threshold=threshold)
    control = TrainerControl()
    cb._check(stats, 1, SimpleNamespace(output_dir=out_dir), None, control)
    result = {"stats": stats, "local_means": local_means, "pooled": pooled, "stop": control.should_training_stop}
    gathered = gather_objects(result)  # rank 0 writes every rank's result, then all ranks shut down together
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "ddp_monitor.json"), gathered, None)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
