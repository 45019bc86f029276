"""2 gloo ranks on CPU: hf_ext's normalized optimizers under FSDP2 (`fully_shard`, parameters sharded on dim 0, as
accelerate's FSDP2 plugin does) and DDP give the parameters of one process on the concatenated batch; an FSDP2
checkpoint through torch.distributed.checkpoint resumes exactly; CubicNewton refuses sharded parameters.

Usage: scale_out_optim.py OUT_DIR (writes OUT_DIR/scale_out_optim.json on rank 0); `check(OUT_DIR)` is the first check
of two_rank_checks.py's launch."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_ext.optim import CubicNewton, LionA, LionAR, RotationalWrapper
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)  # neurons are rows: whole on each rank
        # weight (5, 2, 4) = (in, out, kernel): its 2 output channels are split across the ranks by dim-0 sharding
        self.deconv = nn.ConvTranspose1d(5, 2, 4)
        self.conv = Conv1D(12, 10)  # weight (10, 12), neurons are columns: split across the ranks by dim-0 sharding
        self.ln = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)  # 3 rows on 2 ranks: uneven shards

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = h + self.deconv(h.view(-1, 5, 2)).flatten(1)  # (B, 2, 5) -> 10 features
        return self.head(self.ln(torch.tanh(self.conv(h))))


def fresh(dtype=torch.float32):
    torch.manual_seed(0)
    return Net().to(dtype)


def batches(rank, steps, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(4, 6, generator=g).to(dtype), torch.randn(4, 3, generator=g).to(dtype)) for _ in range(steps)]


CONFIGS = {
    "liona": lambda m: LionA(m.parameters(), lr=1e-2, weight_decay=0.1),
    "liona_snr": lambda m: LionA(m.parameters(), lr=1e-1, snr_correction=True, inverse_bias_correction=True),
    "lionar": lambda m: LionAR(m, lr=1e-2, weight_decay=1.0),
    "lionar_per_tensor": lambda m: LionAR(m, lr=1e-2, weight_decay=1.0, per_neuron=False),
    "lionar_options": lambda m: LionAR(
        m, lr=1e-2, weight_decay=1.0, nesterov=True, snr_correction=True, zero_mean=False, update_norm_decay=0.9
    ),
    "rotational_adamw": lambda m: RotationalWrapper(m, inner="adamw", lr=1e-2, weight_decay=0.1),
    "rotational_adamw_per_tensor": lambda m: RotationalWrapper(
        m, inner="adamw", lr=1e-2, weight_decay=0.1, per_neuron=False, fused=False
    ),
    "rotational_lion": lambda m: RotationalWrapper(m, inner="lion", lr=1e-2, weight_decay=0.1),
    "rotational_sgdm": lambda m: RotationalWrapper(m, inner="sgdm", lr=1e-2, weight_decay=0.1, nesterov=True),
}
RESUME = ["lionar", "lionar_options", "rotational_adamw"]
# bfloat16 weights, resume only: re-centring loaded weights (DCP's load template steps a fresh optimizer) shows here
RESUME_BF16 = {
    "lionar_bf16": CONFIGS["lionar"],
    "rotational_adamw_bf16": CONFIGS["rotational_adamw"],
}


def train(model, opt, data):
    for x, y in data:
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def full(model):
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(out_dir):
    dist.init_process_group("gloo")
    check(out_dir)
    shutdown_distributed()


def check(out_dir):
    """Every comparison on each rank (the process group up); rank 0 writes OUT_DIR/scale_out_optim.json."""
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    mesh = init_device_mesh("cpu", (world,))

    def sharded(make, data, dtype=torch.float32):
        model = fresh(dtype)
        fully_shard(model, mesh=mesh)
        opt = make(model)
        train(model, opt, data)
        return model, opt

    def resumed(make, data, name, dtype=torch.float32):
        """N/2 steps, DCP save, fresh model + optimizer, DCP load, N/2 steps."""
        model, opt = sharded(make, data[:2], dtype)
        msd, osd = get_state_dict(model, opt)
        path = os.path.join(out_dir, f"ckpt_{name}")
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
        model = fresh(dtype)
        fully_shard(model, mesh=mesh)
        opt = make(model)
        # the model first, then the optimizer, as accelerate's `load_state` does: DCP builds the optimizer's load
        # template by stepping it at lr 0 with zero gradients, on the weights just loaded
        msd = {"model": get_model_state_dict(model)}
        dcp.load(msd, checkpoint_id=path)
        set_model_state_dict(model, msd["model"])
        osd = {"optim": get_optimizer_state_dict(model, opt)}
        dcp.load(osd, checkpoint_id=path)
        set_optimizer_state_dict(model, opt, osd["optim"])
        train(model, opt, data[2:])
        return model

    steps = 4
    both = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(batches(0, steps), batches(1, steps))]
    result = {"param_type": None}
    for name, make in CONFIGS.items():
        ref = fresh()
        train(ref, make(ref), both)
        ref_state = full(ref)
        r = {"moved": max_diff(ref_state, full(fresh()))}
        model, _ = sharded(make, batches(rank, steps))
        result["param_type"] = type(model.conv.weight).__name__
        uninterrupted = full(model)
        r["fsdp2"] = max_diff(uninterrupted, ref_state)
        model = fresh()
        opt = make(model)
        train(DistributedDataParallel(model), opt, batches(rank, steps))
        r["ddp"] = max_diff(full(model), ref_state)
        if name in RESUME:  # N/2 steps + DCP save + load + N/2 steps == N steps
            state = full(resumed(make, batches(rank, steps), name))
            r["fsdp2_resumed"] = max_diff(state, ref_state)
            r["fsdp2_resumed_vs_uninterrupted"] = max_diff(state, uninterrupted)
        result[name] = r
    for name, make in RESUME_BF16.items():
        data = batches(rank, steps, torch.bfloat16)
        model, _ = sharded(make, data, torch.bfloat16)
        uninterrupted = full(model)
        result[name] = {
            "moved": max_diff(uninterrupted, full(fresh(torch.bfloat16))),
            "fsdp2_resumed_vs_uninterrupted": max_diff(full(resumed(make, data, name, torch.bfloat16)), uninterrupted),
        }
    model = fresh()
    fully_shard(model, mesh=mesh)
    try:
        CubicNewton(model.parameters(), hessian="fresh")
        result["cubic_newton_error"] = None
    except ValueError as err:
        result["cubic_newton_error"] = str(err)
    gathered = gather_objects(result)  # rank 0 writes every rank's result, then all ranks shut down together
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "scale_out_optim.json"), gathered, None)


if __name__ == "__main__":
    main(sys.argv[1])
