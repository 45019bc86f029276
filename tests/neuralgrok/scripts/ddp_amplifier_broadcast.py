"""Run on 2 gloo ranks: an amplifier passed as `amplifier=` that differs across the ranks (built after a rank-dependent
seed) is replaced by rank 0's at the start of training, as DDP does for the model.

Three runs of 4 steps (outer step every 2, a checkpoint at step 2): `differ` with a different amplifier per rank,
`same` with rank 0's amplifier on both ranks, `resumed` resuming `differ` from its checkpoint-2 with yet other
amplifiers per rank. Every run's amplifier and model must be identical on both ranks, and all three must end with
the same amplifier and model, bit for bit. Prints "rank <r> broadcast: OK".

Usage: ddp_amplifier_broadcast.py OUT_DIR"""

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


def run(out_dir: str, amplifier_seed: int, resume: str | None = None) -> list[torch.Tensor]:
    """Train 4 steps with an amplifier built from `amplifier_seed`; the trained amplifier's and model's tensors."""
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32))
    torch.manual_seed(amplifier_seed)
    amplifier = NeuralAmplifier((8,))
    args = NeuralGrokConfig(
        output_dir=out_dir, max_steps=4, per_device_train_batch_size=4, outer_every=2, amplifier_hidden_dims=[8],
        meta_learning_rate=1e-2, save_strategy="steps", save_steps=2, logging_steps=100, use_cpu=True,
        disable_tqdm=True, seed=0, report_to="none",
    )  # fmt: skip
    trainer = NeuralGrokTrainer(
        model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"], amplifier=amplifier
    )
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.num_outer_steps == 2
    return [t.detach().clone() for t in [*trainer.amplifier.state_dict().values(), *trainer.model.parameters()]]


def main(out_dir: str) -> None:
    assert os.environ.get("WORLD_SIZE") == "2", "expected two ranks (torchrun --nproc_per_node 2)"
    check(out_dir)
    shutdown_distributed()


def check(out_dir: str) -> None:
    """The three runs and their comparisons (also run by scale_out_all.py, in its process group)."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    differ = run(os.path.join(out_dir, "differ"), amplifier_seed=10 + rank)
    assert dist.is_initialized() and dist.get_world_size() == 2
    for i, tensor in enumerate(differ):
        gathered = [torch.empty_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor.contiguous())
        assert torch.equal(gathered[0], gathered[1]), f"tensor {i} differs across the ranks"
    same = run(os.path.join(out_dir, "same"), amplifier_seed=10)  # rank 0's amplifier on both ranks
    assert all(torch.equal(a, b) for a, b in zip(differ, same)), "not the run with rank 0's amplifier"
    resumed = run(
        os.path.join(out_dir, "resumed"),
        amplifier_seed=20 + rank,
        resume=os.path.join(out_dir, "differ", "checkpoint-2"),
    )
    assert all(torch.equal(a, b) for a, b in zip(differ, resumed)), "the resumed run differs"
    print(f"rank {rank} broadcast: OK", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
