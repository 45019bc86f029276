"""2 gloo ranks with accelerate's FSDP2 plugin honoured on CPU as on GPUs (`_fsdp_on_cpu` of
tests/optim/scripts/scale_out_trainer.py), `fsdp_state_dict_type: SHARDED_STATE_DICT` (the shipped FSDP2 configs):
NeuralGrokTrainer (gradient_transform="normalize", which runs under FSDP2) and PrivateTrainer (no DP-SGD) train 2
steps, save a step-2 checkpoint, and their final `save_model` (on every rank) must write a whole model that
`from_pretrained` loads with the trained weights, while the checkpoint stays sharded. Before, transformers'
`save_model` wrote nothing under SHARDED_STATE_DICT: not even the folder.

`run(out_dir)` is a check of two_rank_checks.py's launch (tests/test_two_rank_checks.py); on its own:
whole_model_save_fsdp2_cpu.py OUT_DIR (writes OUT_DIR/whole_model_save.json on rank 0: each rank's results)."""

import datetime
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu, full, max_diff, tiny_llama  # noqa: E402

from hf_ext.utils.distributed import gather_objects, shutdown_distributed  # noqa: E402
from hf_ext.utils.io import atomic_write_json  # noqa: E402


def trainer(name, out_dir, ds):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a fresh plugin per Trainer, as in separate runs
    common = dict(
        output_dir=os.path.join(out_dir, name, "run"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
        use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="steps", save_steps=2, seed=0,
        fsdp=True, fsdp_config={
            "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": "SHARDED_STATE_DICT",
        },
    )  # fmt: skip
    if name == "neuralgrok":
        from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer

        args = NeuralGrokConfig(gradient_transform="normalize", max_grad_norm=0.0, **common)
        return NeuralGrokTrainer(model=tiny_llama(), args=args, train_dataset=ds)
    from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments

    return PrivateTrainer(model=tiny_llama(), args=PrivateTrainingArguments(**common), train_dataset=ds)


def check(out_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    result = {}
    for name in ("neuralgrok", "private"):
        t = trainer(name, out_dir, ds)
        t.train()
        trained = full(t.model)
        final = os.path.join(out_dir, name, "final")
        t.save_model(final)  # every rank, as with Trainer
        dist.barrier()
        r = {"fsdp": t.is_fsdp_enabled, "moved": max_diff(full(tiny_llama()), trained)}
        r["checkpoint"] = sorted(os.listdir(os.path.join(out_dir, name, "run", "checkpoint-2")))
        r["final"] = sorted(os.listdir(final)) if os.path.isdir(final) else None
        try:  # each rank reads the files alone (no collective)
            r["saved_diff"] = max_diff(full(AutoModelForCausalLM.from_pretrained(final)), trained)
        except OSError as err:  # no folder or no weight file
            r["saved_diff"] = f"{type(err).__name__}: {err}"[:300]
        result[name] = r
        dist.barrier()
    return result


def run(out_dir):
    """A check of two_rank_checks.py's launch (its process group up): every rank's results in
    OUT_DIR/whole_model_save.json (written by rank 0)."""
    _fsdp_on_cpu()
    gathered = gather_objects(check(out_dir))
    if dist.get_rank() == 0:
        atomic_write_json(os.path.join(out_dir, "whole_model_save.json"), gathered, None)


def main(out_dir):
    # a collective one rank never reaches fails after 2 minutes instead of gloo's 30
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    run(out_dir)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
