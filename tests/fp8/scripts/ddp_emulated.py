"""2 gloo ranks: the emulated backend's delayed scaling under data parallelism.

1. DDP (buffers not broadcast) and FSDP2 (`fully_shard`), each rank on half of every batch, against one process on
   the whole batch: every rank records the amaxes of the whole batch (input and weight columns equal to the one
   process's; the output-gradient column twice its value, since each rank's loss is the mean over half the tokens),
   so the ranks' histories are identical and the weights match the one process's.
2. `Fp8Trainer` under DDP with `ddp_broadcast_buffers=False`: 2 steps, save, resume to 4 equals 4 uninterrupted
   steps on every rank (a checkpoint holds rank 0's buffers, which are every rank's). The test resumes the same
   checkpoint in one process (`trainer_run(..., batch=4)`, the same global batch) against the 2-rank run.

Usage: ddp_emulated.py OUT_DIR (writes OUT_DIR/ddp_emulated.json on rank 0)."""

import os
import sys

import torch
import torch.distributed as dist

from hf_ext.fp8 import Fp8Trainer, convert
from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json

CFG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
STEPS = 3


def fresh():
    torch.manual_seed(0)
    return convert(FogForCausalLM(FogConfig.fog(**CFG)), backend="emulated", amax_history_len=8)


def whole_batches():
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        ids = torch.randint(0, 64, (4, 8), generator=g)
        ids[2:, 1] = 63  # the halves differ
        out.append(ids)
    return out


def train(model, data, params=None):
    opt = torch.optim.SGD(model.parameters() if params is None else params, lr=0.5)
    for ids in data:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def full_state(model):
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def compare(state, ref):
    hist = [k for k in ref if k.endswith("fp8_amax_history")]
    params = [k for k in ref if "fp8_" not in k]
    return {
        "sites": len(hist),
        "input_weight_hist_diff": max(float((state[k][:, :2] - ref[k][:, :2]).abs().max()) for k in hist),
        "grad_hist_ratio_dev": max(float((state[k][:STEPS, 2] / ref[k][:STEPS, 2] - 2).abs().max()) for k in hist),
        "param_diff": max(float((state[k].float() - ref[k].float()).abs().max()) for k in params),
        "hist": {k: state[k].tolist() for k in hist},
    }


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, 64, (32, 8), generator=g)
        self.ids[1::2, 0] = 63

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer_run(out, steps, resume=None, batch=2):
    from transformers import TrainingArguments

    args = TrainingArguments(
        out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-2, lr_scheduler_type="constant",
        save_strategy="steps", save_steps=2, logging_steps=1, report_to=[], use_cpu=True, seed=0, data_seed=0,
        ddp_broadcast_buffers=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = Fp8Trainer(model=fresh(), args=args, train_dataset=Rows())
    trainer.train(resume_from_checkpoint=resume)
    return full_state(trainer.accelerator.unwrap_model(trainer.model))


def main(out_dir):
    if not dist.is_initialized():  # tests/scripts/checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    data = whole_batches()
    halves = [ids[2 * rank : 2 * rank + 2] for ids in data]
    ref = fresh()
    train(ref, data)
    ref = full_state(ref)
    result = {"rank": rank}

    ddp_model = fresh()
    ddp = DistributedDataParallel(ddp_model, broadcast_buffers=False)
    train(ddp, halves)
    result["ddp"] = compare(full_state(ddp_model), ref)

    fsdp_model = fresh()
    mesh = init_device_mesh("cpu", (world,))
    for layer in fsdp_model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(fsdp_model, mesh=mesh)
    train(fsdp_model, halves)
    result["fsdp2"] = compare(full_state(fsdp_model), ref)

    straight = trainer_run(os.path.join(out_dir, "straight"), 4)
    resumed_dir = os.path.join(out_dir, "resumed")
    trainer_run(resumed_dir, 2)
    dist.barrier()
    resumed = trainer_run(resumed_dir, 4, resume=os.path.join(resumed_dir, "checkpoint-2"))
    result["resume"] = {
        "param_diff": max(float((straight[k] - resumed[k]).abs().max()) for k in straight if "fp8_" not in k),
        "buffer_diff": max(float((straight[k] - resumed[k]).abs().max()) for k in straight if "fp8_" in k),
    }
    gathered = gather_objects(result)
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "ddp_emulated.json"), gathered, None)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
