"""2 gloo ranks on CPU: NeuralGrokTrainer with gradient_transform='grokfast_ema' / 'grokfast_ma' under FSDP2 through
the Trainer (accelerate's `fully_shard` per decoder layer, honoured on CPU by `_fsdp_on_cpu` of
tests/optim/scripts/scale_out_trainer.py) saves a checkpoint at step 2, and a run resumed from it ends where the
uninterrupted 4-step run does: the logged losses, the parameters and the Grokfast buffers.

The checkpoint's Grokfast state holds the whole buffers (every rank gathers its shards, rank 0 writes them), equal to
the run's state at step 2, and a GradFilterOptimizer of the unsharded model in one process reads them. The Grokfast
buffers are shards of their parameters (DTensors) under FSDP2: rank 0 used to hand them to safetensors, which raised,
while rank 1 went on to the next collective and waited.

Usage: fsdp2_grokfast_resume.py OUT_DIR (writes OUT_DIR/fsdp2_grokfast_resume.json on rank 0)."""

import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "optim", "scripts"))  # fmt: skip
from scale_out_trainer import _fsdp_on_cpu, full, max_diff, tiny_llama  # noqa: E402

from hf_ext.utils.distributed import gather_objects, is_dtensor, shutdown_distributed  # noqa: E402
from hf_ext.utils.io import atomic_write_json  # noqa: E402

STEPS = 4
# one state_dict_type each: the Grokfast file is the trainer's own, whichever layout accelerate gives the model
MODES = {"grokfast_ema": "SHARDED_STATE_DICT", "grokfast_ma": "FULL_STATE_DICT"}


def make(out_dir, mode, ids, callbacks=None):
    from accelerate.state import AcceleratorState
    from datasets import Dataset

    from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer

    AcceleratorState._reset_state()  # a fresh plugin per Trainer, as in separate runs
    args = NeuralGrokConfig(
        output_dir=out_dir, per_device_train_batch_size=2, max_steps=STEPS, learning_rate=1e-2, warmup_steps=0,
        gradient_transform=mode, grokfast_window=3, grokfast_warmup=False, track_entropy=False,
        track_train_accuracy=False, use_cpu=True, report_to="none", disable_tqdm=True, logging_steps=1,
        save_strategy="steps", save_steps=2, train_sampling_strategy="sequential", seed=0,
        fsdp=True, fsdp_config={
            "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": MODES[mode],
        },
    )  # fmt: skip
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    return NeuralGrokTrainer(model=tiny_llama(), args=args, train_dataset=ds, callbacks=callbacks)


def grokfast_state(trainer):
    """The whole Grokfast buffers, by parameter index (gathered: every rank calls this)."""
    state = trainer.transform_optimizer.extra_state_dict()
    return {k: v.clone() for k, v in (state.get("ema") or state.get("queues")).items()}


def state_diff(a, b):
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def losses(trainer, after=0):
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e and e["step"] > after}


def check(out_dir, mode, ids):
    from transformers import TrainerCallback

    from hf_ext.neuralgrok import GradFilterOptimizer
    from hf_ext.neuralgrok.state import load_state

    class AtStep2(TrainerCallback):  # the Grokfast state the step-2 checkpoint must hold (on_step_end: every rank)
        state = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                AtStep2.state = grokfast_state(trainer)

    base = os.path.join(out_dir, mode)
    trainer = make(os.path.join(base, "run"), mode, ids, callbacks=[AtStep2()])
    trainer.train()
    r = {"fsdp": trainer.is_fsdp_enabled}
    r["param_type"] = type(trainer.model.model.layers[0].self_attn.q_proj.weight).__name__
    live = trainer.transform_optimizer._ema or trainer.transform_optimizer._queues
    r["buffer_type"] = type(live[0] if mode == "grokfast_ema" else live[0][0]).__name__
    params, run_losses, grok = full(trainer.model), losses(trainer, after=2), grokfast_state(trainer)
    r["moved"] = max_diff(params, full(tiny_llama()))
    r["buffer_norm"] = max(float(t.norm()) for t in grok.values())
    checkpoint = os.path.join(base, "run", "checkpoint-2")

    # the checkpoint's buffers: whole tensors, equal to the run's at step 2
    saved = load_state(os.path.join(checkpoint, "gradient_transform_state"))
    saved_buffers = saved.get("ema") or saved.get("queues")
    r["saved_types"] = sorted({type(t).__name__ for t in saved_buffers.values()})
    r["saved_vs_step_2"] = state_diff(saved_buffers, AtStep2.state)
    r["saved_num_transforms"] = saved["num_transforms"]
    # ... which a GradFilterOptimizer of the unsharded model reads in one process (no collective: every rank alone),
    # its parameters in the order of the trainer's param groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    plain = tiny_llama()
    groups = [{"params": [plain.get_parameter(names[id(p)]) for p in g["params"]]} for g in trainer.optimizer.param_groups]  # fmt: skip
    one = GradFilterOptimizer(
        torch.optim.AdamW(groups, lr=1e-2), mode=mode[len("grokfast_") :], window=3, warmup=False
    )
    one.load_extra_state_dict(saved)
    loaded = one._ema if mode == "grokfast_ema" else {i: torch.stack(tuple(q)) for i, q in one._queues.items()}
    r["one_process_types"] = sorted({type(t).__name__ for t in loaded.values()})
    r["one_process_vs_step_2"] = state_diff({str(i): t for i, t in loaded.items()}, AtStep2.state)
    dist.barrier()

    resumed = make(os.path.join(base, "run2"), mode, ids)
    resumed.train(resume_from_checkpoint=checkpoint)
    r["losses"], r["resumed_losses"] = run_losses, losses(resumed, after=2)
    r["resume_param_diff"] = max_diff(full(resumed.model), params)
    r["resume_state_diff"] = state_diff(grokfast_state(resumed), grok)
    r["resume_num_transforms"] = resumed.transform_optimizer.num_transforms
    r["resumed_buffers_sharded"] = all(
        is_dtensor(t) for q in (resumed.transform_optimizer._ema or resumed.transform_optimizer._queues).values()
        for t in ([q] if mode == "grokfast_ema" else q)
    )  # fmt: skip
    return r


def run(out_dir):
    """The checks, in an initialised 2-rank gloo group after `_fsdp_on_cpu()` (also run by scale_out_all.py)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    ids = torch.randint(0, 64, (4 * STEPS, 8), generator=torch.Generator().manual_seed(0))
    result = {mode: check(out_dir, mode, ids) for mode in MODES}
    gathered = gather_objects(result)  # rank 0 writes every rank's result
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "fsdp2_grokfast_resume.json"), gathered, None)


def main(out_dir):
    _fsdp_on_cpu()
    # a collective one rank never reaches fails after 2 minutes instead of gloo's 30
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    run(out_dir)
    shutdown_distributed()  # all ranks shut down together


if __name__ == "__main__":
    main(sys.argv[1])
