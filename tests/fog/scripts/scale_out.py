"""2 gloo ranks on CPU: FOG trains under FSDP2 (`fully_shard`, what accelerate's FSDP plugin applies) and under DDP
(through accelerate), each matching a single-process run on the concatenated batch; FSDP2 also runs with torchao FP8
(emulated GEMMs on CPU) and FP8 all-gather of the sharded weights."""

import os
import sys

import torch
import torch.distributed as dist

from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json

CFG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
STEPS = 3


def fresh():
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**CFG))


def batches(rank):
    g = torch.Generator().manual_seed(1000 + rank)
    return [torch.randint(0, 64, (2, 8), generator=g) for _ in range(STEPS)]


def train(model, data, wrap_params=None):
    opt = torch.optim.AdamW(wrap_params if wrap_params is not None else model.parameters(), lr=1e-2)
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def full_state(model):
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return out


def max_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def main(out_dir):
    if not dist.is_initialized():  # tests/scripts/checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # single-process reference on the concatenated batch (same on both ranks)
    ref = fresh()
    both = [torch.cat(pair) for pair in zip(batches(0), batches(1))]
    train(ref, both)
    ref_state = full_state(ref)
    result = {}

    # FSDP2
    mesh = init_device_mesh("cpu", (world,))
    model = fresh()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = type(model.model.layers[0].self_attn.q_proj.weight).__name__
    train(model, batches(rank))
    result["fsdp2"] = {"param_type": sharded, "max_diff_vs_single": max_diff(full_state(model), ref_state)}

    # DDP through accelerate (what Trainer uses on CPU and GPU)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = fresh()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    for ids in batches(rank):
        acc.backward(model(input_ids=ids, labels=ids).loss)
        opt.step()
        opt.zero_grad()
    result["ddp"] = {
        "wrapper": type(model).__name__,
        "max_diff_vs_single": max_diff(full_state(acc.unwrap_model(model)), ref_state),
    }

    # FSDP2 + torchao FP8 with FP8 all-gather of the sharded weights
    from hf_ext.fp8 import convert, fp8_converted_modules

    model = fresh()
    convert(model, "torchao", emulate=True, fsdp_float8_all_gather=True)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    losses = train(model, batches(rank))
    weight = model.model.layers[0].self_attn.q_proj.weight
    result["fsdp2_fp8"] = {
        "converted": len(fp8_converted_modules(model)),
        "weight_local_type": type(weight.to_local()).__name__
        if hasattr(weight, "to_local")
        else type(weight).__name__,
        "losses": losses,
        "max_diff_vs_single": max_diff(full_state(model), ref_state),
    }
    gathered = gather_objects(result)  # rank 0 writes every rank's result, then all ranks shut down together
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "scale_out.json"), gathered, None)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
