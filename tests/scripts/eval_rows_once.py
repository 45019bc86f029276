"""`Trainer.evaluate()` of hf_ext's Trainers on 5 evaluation rows at eval batch 2: under 2 ranks accelerate pads the
last batch with repeated rows; the eval_loss must equal one process's. `run_two_ranks` is a check of two_rank_checks.py's
launch; tests/test_two_rank_checks.py also imports `eval_losses` to compute the one-process values.

Usage: torchrun --nproc_per_node 2 eval_rows_once.py <output_dir>
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "grape", "scripts"))
from grape_synthetic import markov_sequences, quick_grape_args, synthetic_mixture, tiny_llama  # noqa: E402

ROWS, EVAL_BATCH = 5, 2
CASES = (
    "plain_trainer",
    "mixin_trainer",
    "mixin_trainer_with_metrics",
    "fp8_trainer",
    "grape_trainer",
    "warmup_trainer",
    "neuralgrok_trainer",
    "metadata_trainer",
    "private_trainer",
)


def _eval_dataset():
    from datasets import Dataset

    rows = markov_sequences(7, ROWS, 16)
    # different last tokens per row: a duplicate row changes a batch's mean loss
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def _trainer(case: str, out: str):
    from accelerate.state import AcceleratorState
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_ext.fp8 import Fp8Trainer
    from hf_ext.grape import GrapeTrainer
    from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments
    from hf_ext.utils import EvalRowsOnceMixin

    class MixinTrainer(EvalRowsOnceMixin, Trainer):
        pass

    AcceleratorState._reset_state()
    common = dict(output_dir=os.path.join(out, case), per_device_eval_batch_size=EVAL_BATCH, use_cpu=True,
                  report_to=[], disable_tqdm=True)  # fmt: skip
    eval_ds = _eval_dataset()
    kwargs = dict(model=tiny_llama(), eval_dataset=eval_ds, data_collator=default_data_collator)
    if case == "grape_trainer":
        train, targets = synthetic_mixture()
        args = quick_grape_args(common["output_dir"], per_device_eval_batch_size=EVAL_BATCH)
        return GrapeTrainer(args=args, train_dataset=train, target_datasets=targets, **kwargs)
    if case == "warmup_trainer":
        return WarmupFreeTrainer(args=WarmupFreeTrainingArguments(weight_decay=0.1, **common), **kwargs)
    if case == "fp8_trainer":
        return Fp8Trainer(args=TrainingArguments(**common), **kwargs)
    if case == "neuralgrok_trainer":  # the amplifier on: the evaluation rows double as its outer set
        from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer

        return NeuralGrokTrainer(args=NeuralGrokConfig(**common), outer_dataset=eval_ds, **kwargs)
    if case == "metadata_trainer":
        from hf_ext.metadata import MetadataTrainer

        return MetadataTrainer(args=TrainingArguments(**common), **kwargs)
    if case == "private_trainer":
        from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments

        return PrivateTrainer(args=PrivateTrainingArguments(**common), **kwargs)
    if case == "mixin_trainer_with_metrics":  # logits and labels gathered for compute_metrics
        return MixinTrainer(args=TrainingArguments(**common), compute_metrics=lambda p: {"rows": len(p.label_ids)},
                            **kwargs)  # fmt: skip
    cls = MixinTrainer if case == "mixin_trainer" else Trainer
    return cls(args=TrainingArguments(**common), **kwargs)


def eval_losses(out: str) -> dict:
    """`{case: evaluate() metrics}` in this process (one process or one rank of several)."""
    import torch

    torch.set_num_threads(1)
    result = {}
    for case in CASES:
        metrics = _trainer(case, out).evaluate()
        result[case] = {k: v for k, v in metrics.items() if k in ("eval_loss", "eval_rows")}
    return result


def run_two_ranks(out: str) -> None:
    """`eval_losses` on each of 2 ranks; rank 0 writes both ranks' into OUT/eval_rows_once.json."""
    import torch.distributed as dist

    losses = eval_losses(out)
    assert dist.get_world_size() == 2
    ranks = [None, None]
    dist.all_gather_object(ranks, losses)
    if dist.get_rank() == 0:
        with open(os.path.join(out, "eval_rows_once.json"), "w") as fh:
            json.dump({"world_size": dist.get_world_size(), "ranks": ranks}, fh)


if __name__ == "__main__":
    from hf_ext.utils import shutdown_distributed

    run_two_ranks(sys.argv[1])
    shutdown_distributed()
