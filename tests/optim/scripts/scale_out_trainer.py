"""2 gloo ranks on CPU: hf_ext's optimizers through transformers' `Trainer` with accelerate's FSDP2 plugin
(`TrainingArguments(fsdp=True, fsdp_config={"fsdp_version": 2, ...})`), and the update metrics under FSDP2.

accelerate 1.15 turns a `fsdp_plugin` into FSDP only for accelerator devices (`AcceleratorState`: the MULTI_GPU /
NPU / XPU ... branch); on CPU with gloo (MULTI_CPU) it drops the plugin without a word and the Trainer runs plain
DDP. `_fsdp_on_cpu()` makes that one decision the way it is made on a GPU, so the rest is accelerate's and the
Trainer's own FSDP2 code: `fsdp2_prepare_model` (`fully_shard` per decoder layer, DTensor parameters), the switch of
the optimizer's parameters to the sharded ones, `save_fsdp_model` / `save_fsdp_optimizer` and their loaders.

1. WarmupFreeTrainer (LionAR with `UpdateMetricsCallback` and a probe batch; RotationalWrapper(AdamW)) equals one
   process on the global batch, and every metric equals the one-process value on every rank;
2. checkpoint at step 2 (SHARDED_STATE_DICT and FULL_STATE_DICT), copy the folder, resume: equals the 4-step run;
   the final `save_model` writes a whole model `from_pretrained` loads with either state dict type;
3. the metric functions on a `fully_shard`-ed Linear / Conv1D / 3-row Linear equal their one-process values.

Usage: scale_out_trainer.py OUT_DIR (writes OUT_DIR/scale_out_trainer.json on rank 0); `check(OUT_DIR)` is a check of
two_rank_checks.py's launch."""

import os
import shutil
import sys

import torch
import torch.distributed as dist
from torch import nn

from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json


def _fsdp_on_cpu():
    import accelerate.state as state
    from accelerate.utils import DistributedType

    init = state.AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type in (DistributedType.MULTI_CPU, DistributedType.FSDP):
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # later `AcceleratorState()` calls copy the process state's type back in
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    state.AcceleratorState.__init__ = patched


STEPS = 4


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def full(model):
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in b)


def make_trainer(out_dir, name, ids, state_dict_type="SHARDED_STATE_DICT", save=False, callbacks=None):
    from accelerate.state import AcceleratorState
    from datasets import Dataset

    from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments

    AcceleratorState._reset_state()  # a fresh plugin per Trainer, as in separate runs
    args = WarmupFreeTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=2, max_steps=STEPS, learning_rate=1e-2, weight_decay=0.1,
        warmup_steps=1, normalized_optimizer=name, use_cpu=True, report_to=[], disable_tqdm=True, logging_steps=1,
        save_strategy="steps" if save else "no", save_steps=2, train_sampling_strategy="sequential",
        fsdp=True, fsdp_config={
            "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": state_dict_type,
        },
    )  # fmt: skip
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    return WarmupFreeTrainer(model=tiny_llama(), args=args, train_dataset=ds, callbacks=callbacks)


def one_process(trainer, ids, callback=None):
    """The same optimizer, schedule and clipping in one process on the global batch of 4 (the callback driven by
    hand around each step)."""
    from transformers import TrainerControl, TrainerState
    from transformers.optimization import get_wsd_schedule

    from hf_ext.optim import build_normalized_optimizer
    from hf_ext.optim.warmup_trainer import wsd_schedule_arguments

    args = trainer.args
    model = tiny_llama()
    opt = build_normalized_optimizer(model, args)
    warmup, kwargs = wsd_schedule_arguments(args, STEPS)
    sched = get_wsd_schedule(opt, num_warmup_steps=warmup, num_training_steps=STEPS, **kwargs)
    state, control = TrainerState(), TrainerControl()
    for step in range(STEPS):
        batch = ids[4 * step : 4 * step + 4]
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if callback is not None:
            callback.on_pre_optimizer_step(args, state, control, model=model, optimizer=opt)
        opt.step()
        if callback is not None:
            callback.on_optimizer_step(args, state, control, model=model, optimizer=opt)
        sched.step()
        opt.zero_grad()
        state.global_step += 1
    return model


def trainer_checks(out_dir, rank):
    from hf_ext.optim import UpdateMetricsCallback

    ids = torch.randint(0, 64, (4 * STEPS, 8), generator=torch.Generator().manual_seed(0))
    probe = {"input_ids": ids[:2]}
    result = {}
    for name in ("lion_ar", "rotational_adamw"):
        cb = UpdateMetricsCallback(probe_batch=probe, plot_path=None) if name == "lion_ar" else None
        trainer = make_trainer(os.path.join(out_dir, name), name, ids, callbacks=[cb] if cb else None)
        trainer.train()
        ref_cb = UpdateMetricsCallback(probe_batch=probe, plot_path=None) if cb else None
        ref = one_process(trainer, ids, ref_cb)
        weight = trainer.model.model.layers[0].self_attn.q_proj.weight
        result[name] = {
            "fsdp": trainer.is_fsdp_enabled,
            "param_type": type(weight).__name__,
            "diff": max_diff(full(trainer.model), full(ref)),
            "moved": max_diff(full(tiny_llama()), full(ref)),
        }
        if cb is not None:
            result[name]["metrics"] = cb.history
            result[name]["metrics_one_process"] = ref_cb.history
    for sdt in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
        base = os.path.join(out_dir, sdt)
        trainer = make_trainer(os.path.join(base, "run"), "lion_ar", ids, sdt, save=True)
        trainer.train()
        uninterrupted = full(trainer.model)
        if rank == 0:  # the checkpoint moves to another folder before the resume
            shutil.copytree(os.path.join(base, "run", "checkpoint-2"), os.path.join(base, "moved"))
            shutil.rmtree(os.path.join(base, "run"))
        dist.barrier()
        trainer = make_trainer(os.path.join(base, "run2"), "lion_ar", ids, sdt, save=True)
        trainer.train(resume_from_checkpoint=os.path.join(base, "moved"))
        result[f"resume_{sdt}"] = max_diff(full(trainer.model), uninterrupted)
        # the final save_model (every rank) writes a whole model also with SHARDED_STATE_DICT, where transformers'
        # save_model writes none: the folder loads with from_pretrained and holds the trained weights
        trainer.save_model(os.path.join(base, "final"))
        dist.barrier()
        if rank == 0:
            from transformers import AutoModelForCausalLM

            try:
                saved = AutoModelForCausalLM.from_pretrained(os.path.join(base, "final"))
                result[f"saved_{sdt}"] = max_diff(full(saved), uninterrupted)
            except OSError as err:  # no weight file
                result[f"saved_{sdt}"] = f"{type(err).__name__}: {err}"
    return result


def metric_function_checks(rank, mesh):
    from torch.distributed.fsdp import fully_shard
    from transformers.pytorch_utils import Conv1D

    from hf_ext.optim import (
        angular_update,
        gradient_momentum_cosine,
        l2_update_norm,
        relative_representation_change,
        relative_update_norms,
    )

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 10)  # row neurons, whole on each rank
            self.conv = Conv1D(12, 10)  # weight (10, 12): column neurons split across the ranks
            self.head = nn.Linear(12, 3)  # 3 rows on 2 ranks: uneven shards

        def forward(self, x):
            return self.head(torch.tanh(self.conv(torch.tanh(self.fc1(x)))))

    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    probe10, probe12 = torch.randn(4, 10, generator=g), torch.randn(4, 12, generator=g)

    def measure(sharded):
        torch.manual_seed(0)
        model = Net()
        if sharded:
            fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        out = []
        for _ in range(2):
            xb, yb = (x[4 * rank : 4 * rank + 4], y[4 * rank : 4 * rank + 4]) if sharded else (x, y)
            nn.functional.mse_loss(model(xb), yb).backward()
            old = {n: p.detach().clone() for n, p in model.named_parameters()}
            pairs = [(p.grad, opt.state[p]["exp_avg"]) for p in model.parameters() if opt.state.get(p)]
            cos = gradient_momentum_cosine([a for a, _ in pairs], [b for _, b in pairs]) if pairs else 0.0
            opt.step()
            opt.zero_grad()
            new = dict(model.named_parameters())
            angles = [
                angular_update(old["fc1.weight"], new["fc1.weight"]),
                angular_update(old["head.weight"], new["head.weight"]),
            ]
            angles.append(angular_update(old["conv.weight"], new["conv.weight"], neuron_dim=1))
            out.append({
                "l2": l2_update_norm(list(old.values()), [new[n] for n in old]),
                "rel": relative_update_norms(old, new),
                "angles": [a.tolist() for a in angles],
                "rrc_conv": relative_representation_change(probe10, old["conv.weight"], new["conv.weight"], True),
                "rrc_head": relative_representation_change(probe12, old["head.weight"], new["head.weight"]),
                "cos": cos,
            })  # fmt: skip
        return out

    errors = {}
    try:
        return {"one_process": measure(False), "fsdp2": measure(True)}
    except Exception as err:  # reported, the test names it
        errors["error"] = f"{type(err).__name__}: {err}"[:400]
    return errors


def main(out_dir):
    _fsdp_on_cpu()
    dist.init_process_group("gloo")
    check(out_dir)
    shutdown_distributed()


def check(out_dir):
    """Both parts on each rank (the process group up, `_fsdp_on_cpu` applied); rank 0 writes
    OUT_DIR/scale_out_trainer.json."""
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    from torch.distributed.device_mesh import init_device_mesh

    result = {"functions": metric_function_checks(rank, init_device_mesh("cpu", (world,)))}
    try:
        result["trainer"] = trainer_checks(out_dir, rank)
    except Exception as err:
        result["trainer"] = {"error": f"{type(err).__name__}: {err}"[:400]}
    gathered = gather_objects(result)  # rank 0 writes every rank's result, then all ranks shut down together
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "scale_out_trainer.json"), gathered, None)


if __name__ == "__main__":
    main(sys.argv[1])
