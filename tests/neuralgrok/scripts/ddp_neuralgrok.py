"""Run on 2 gloo ranks: NeuralGrok keeps the amplifier and the model identical on every rank.

Every rank writes OUT_DIR/log_rank<rank>.json (its `log_history`; the test compares the logged `train_accuracy` with
one process at twice the batch, `make_trainer(..., batch_size=8)`); rank 0 writes OUT_DIR/amplifier_rank0.pt (the
trained amplifier's `state_dict`; the test compares it with that one-process run's). With `recompute` the script also
resumes the run from its checkpoint-3 on 2 ranks (OUT_DIR/resumed/log_rank<rank>.json), trains the float64 run with 1 to
3 labelled tokens per row (`make_trainer(..., unequal_labels=True)`; rank 0 writes its amplifier and its model to
OUT_DIR/amplifier_unequal_rank0.pt and OUT_DIR/model_unequal_rank0.pt) and runs the neuralgrok recipe on 2 ranks,
recording on every rank which of the recipe's writers it called (OUT_DIR/recipe_calls_rank<rank>.json; the recipe's
files in OUT_DIR/recipe). The recipe tears the process group down: it runs last.

Usage: ddp_neuralgrok.py OUT_DIR [recompute|next_step] (the outer step's gradient, `NeuralGrokConfig.outer_gradient`).
`ddp_neuralgrok.py OUT_DIR next_step recompute` runs both in one launch, each into OUT_DIR/<outer_gradient> (recompute
last: its recipe tears the process group down); every rank prints `rank R <outer_gradient>: OK` after each."""

import os
import sys

import torch
import torch.distributed as dist

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from hf_ext.utils import shutdown_distributed
from hf_ext.utils.io import atomic_write_json


def make_trainer(
    out_dir: str, outer_gradient: str = "recompute", batch_size: int = 4, unequal_labels: bool = False
) -> NeuralGrokTrainer:
    """This script's run, `batch_size` rows per rank: logs every 2 steps, a checkpoint at step 3 (between two logs).
    `unequal_labels`: rows with 1 to 3 labelled next tokens (`idx % 3 + 1`, so the ranks, and the outer batches of 4 and
    of 8 rows, hold different counts), model and amplifier in float64, no checkpoint."""
    torch.set_num_threads(1)
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
    if unequal_labels:

        def more_labels(row, idx):
            ids, k = list(row["input_ids"]), idx % 3 + 1
            return {"labels": [-100] * (len(ids) - k) + ids[len(ids) - k :]}

        splits = {name: ds.map(more_labels, with_indices=True) for name, ds in splits.items()}
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32))
    amplifier = NeuralAmplifier((8,)).double() if unequal_labels else None
    args = NeuralGrokConfig(
        output_dir=out_dir, max_steps=4 if outer_gradient == "recompute" else 5,
        per_device_train_batch_size=batch_size, outer_every=2, outer_gradient=outer_gradient,
        amplifier_hidden_dims=[8], meta_learning_rate=1e-2, logging_steps=2,
        save_strategy="no" if unequal_labels else "steps", save_steps=3,
        use_cpu=True, disable_tqdm=True, seed=0, report_to="none",
    )  # fmt: skip
    return NeuralGrokTrainer(
        model=model.double() if unequal_labels else model,
        args=args,
        train_dataset=splits["inner"],
        outer_dataset=splits["outer"],
        amplifier=amplifier,
    )


def run_recipe(out_dir: str, rank: int) -> None:
    """The neuralgrok recipe on these 2 ranks, recording which of its writers this rank called."""
    import hf_ext.recipes._common as common
    import hf_ext.recipes.neuralgrok as recipe

    calls = {"write_outputs": 0, "clear_previous_results": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    recipe.write_outputs = counted("write_outputs", recipe.write_outputs)
    common.clear_previous_results = counted("clear_previous_results", common.clear_previous_results)
    results = recipe.main([
        "--use_cpu", "--output_dir", os.path.join(out_dir, "recipe"), "--p", "11", "--methods", "neuralgrok",
        "--seeds", "0", "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "4", "--hidden_size", "32", "--outer_fraction", "0.2", "--outer_every", "2",
        "--max_eval_samples", "16", "--disable_tqdm", "True",
    ])  # fmt: skip
    calls["train_accuracy"] = results["methods"]["neuralgrok"]["runs"][0]["curves"]["train_accuracy"]
    atomic_write_json(os.path.join(out_dir, f"recipe_calls_rank{rank}.json"), calls)


def main(out_dir: str, *outer_gradients: str) -> None:
    assert os.environ.get("WORLD_SIZE") == "2", "expected two ranks (torchrun --nproc_per_node 2)"
    outer_gradients = outer_gradients or ("recompute",)
    assert set(outer_gradients) <= {"recompute", "next_step"}, f"unknown outer gradient in {outer_gradients}"
    assert "recompute" not in outer_gradients[:-1], "recompute (its recipe ends the process group) must come last"
    for outer_gradient in outer_gradients:
        check(os.path.join(out_dir, outer_gradient) if len(outer_gradients) > 1 else out_dir, outer_gradient)
    shutdown_distributed()


def check(out_dir: str, outer_gradient: str) -> None:
    trainer = make_trainer(out_dir, outer_gradient)
    trainer.train()
    assert dist.is_initialized() and dist.get_world_size() == 2
    rank = dist.get_rank()
    assert trainer.num_outer_steps == 2
    for name, tensor in [*trainer.amplifier.named_parameters(), *trainer.model.named_parameters()]:
        gathered = [torch.empty_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor.detach().contiguous())
        assert torch.equal(gathered[0], gathered[1]), f"{name} differs across ranks"
    atomic_write_json(os.path.join(out_dir, f"log_rank{rank}.json"), trainer.state.log_history)
    if rank == 0:
        torch.save({k: v.detach().cpu() for k, v in trainer.amplifier.state_dict().items()},
                   os.path.join(out_dir, "amplifier_rank0.pt"))  # fmt: skip
    if outer_gradient == "recompute":
        resumed = make_trainer(os.path.join(out_dir, "resumed"), outer_gradient)
        resumed.train(resume_from_checkpoint=os.path.join(out_dir, "checkpoint-3"))
        atomic_write_json(os.path.join(out_dir, "resumed", f"log_rank{rank}.json"), resumed.state.log_history)
        unequal = make_trainer(os.path.join(out_dir, "unequal"), outer_gradient, unequal_labels=True)
        unequal.train()
        if rank == 0:
            torch.save({k: v.detach().cpu() for k, v in unequal.amplifier.state_dict().items()},
                       os.path.join(out_dir, "amplifier_unequal_rank0.pt"))  # fmt: skip
            torch.save({k: v.detach().cpu() for k, v in unequal.model.state_dict().items()},
                       os.path.join(out_dir, "model_unequal_rank0.pt"))  # fmt: skip
        run_recipe(out_dir, rank)
    print(f"rank {rank} {outer_gradient}: OK", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
