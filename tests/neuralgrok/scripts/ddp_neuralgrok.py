"""Run on 2 gloo ranks: NeuralGrok keeps the amplifier and the model identical on every rank.

Every rank writes OUT_DIR/log_rank<rank>.json (its `log_history`; the test compares the logged `train_accuracy` with
one process at twice the batch, `make_trainer(..., batch_size=8)`). With `recompute` the script also resumes the run
from its checkpoint-3 on 2 ranks (OUT_DIR/resumed/log_rank<rank>.json).

Usage: ddp_neuralgrok.py OUT_DIR [recompute|next_step] (the outer step's gradient, `NeuralGrokConfig.outer_gradient`)."""

import os
import sys

import torch
import torch.distributed as dist

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from hf_ext.utils import shutdown_distributed
from hf_ext.utils.io import atomic_write_json


def make_trainer(out_dir: str, outer_gradient: str = "recompute", batch_size: int = 4) -> NeuralGrokTrainer:
    """This script's run, `batch_size` rows per rank: logs every 2 steps, a checkpoint at step 3 (between two logs)."""
    torch.set_num_threads(1)
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32))
    args = NeuralGrokConfig(
        output_dir=out_dir, max_steps=4 if outer_gradient == "recompute" else 5,
        per_device_train_batch_size=batch_size, outer_every=2, outer_gradient=outer_gradient,
        amplifier_hidden_dims=[8], meta_learning_rate=1e-2, logging_steps=2, save_strategy="steps", save_steps=3,
        use_cpu=True, disable_tqdm=True, seed=0, report_to="none",
    )  # fmt: skip
    return NeuralGrokTrainer(model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"])


def main(out_dir: str, outer_gradient: str = "recompute") -> None:
    assert os.environ.get("WORLD_SIZE") == "2", "expected two ranks (torchrun --nproc_per_node 2)"
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
    if outer_gradient == "recompute":
        resumed = make_trainer(os.path.join(out_dir, "resumed"), outer_gradient)
        resumed.train(resume_from_checkpoint=os.path.join(out_dir, "checkpoint-3"))
        atomic_write_json(os.path.join(out_dir, "resumed", f"log_rank{rank}.json"), resumed.state.log_history)
    print(f"rank {rank}: OK", flush=True)
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
