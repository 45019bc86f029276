"""Run on 2 gloo ranks: NeuralGrok keeps the amplifier and the model identical on every rank.

Usage: ddp_neuralgrok.py OUT_DIR [recompute|next_step] (the outer step's gradient, `NeuralGrokConfig.outer_gradient`)."""

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


def main(out_dir: str, outer_gradient: str = "recompute") -> None:
    torch.set_num_threads(1)
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32))
    args = NeuralGrokConfig(
        output_dir=out_dir, max_steps=4 if outer_gradient == "recompute" else 5, per_device_train_batch_size=4,
        outer_every=2, outer_gradient=outer_gradient, amplifier_hidden_dims=[8], meta_learning_rate=1e-2,
        use_cpu=True, disable_tqdm=True, seed=0, report_to="none",
    )  # fmt: skip
    trainer = NeuralGrokTrainer(model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"])
    trainer.train()
    assert dist.is_initialized() and dist.get_world_size() == 2
    assert trainer.num_outer_steps == 2
    for name, tensor in [*trainer.amplifier.named_parameters(), *trainer.model.named_parameters()]:
        gathered = [torch.empty_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor.detach().contiguous())
        assert torch.equal(gathered[0], gathered[1]), f"{name} differs across ranks"
    print(f"rank {dist.get_rank()}: OK", flush=True)
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
