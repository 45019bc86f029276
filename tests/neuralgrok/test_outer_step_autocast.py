"""Mixed precision: the outer step's forwards (the recomputed real-step loss and the outer loss on the virtual
parameters) run under the same autocast as the real step's forward (bf16 on CPU through accelerate)."""

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)

P = 11


@pytest.mark.parametrize("outer_gradient", ["recompute", "next_step"])
def test_outer_step_forwards_run_under_the_real_steps_autocast(tmp_path, outer_gradient):
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=P + 2, hidden_size=32, num_attention_heads=4))
    args = NeuralGrokConfig(
        output_dir=str(tmp_path),
        gradient_transform="neuralgrok",
        outer_gradient=outer_gradient,
        max_steps=4,
        per_device_train_batch_size=8,
        outer_every=2,
        amplifier_hidden_dims=[8, 8],
        learning_rate=1e-2,
        seed=0,
        use_cpu=True,
        bf16=True,
        disable_tqdm=True,
        save_strategy="no",
        report_to=[],
    )
    trainer = NeuralGrokTrainer(model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"])
    seen = {True: [], False: []}  # in the outer step -> autocast state of each forward of the first block

    def record(module, inputs, output):
        seen[bool(trainer._in_outer_step)].append(torch.is_autocast_enabled("cpu"))

    block = next(m for m in model.modules() if type(m).__name__ == "GrokDecoderBlock")
    block.register_forward_hook(record)
    trainer.train()
    # next_step: the outer step due after step 4 would run on step 5's gradient, past max_steps
    assert trainer.num_outer_steps == (2 if outer_gradient == "recompute" else 1)
    assert seen[False] and all(seen[False]), "the real steps' forwards ran without bf16 autocast"
    # recompute: the real step's loss again and the outer loss, per outer step; next_step: the outer loss only
    assert len(seen[True]) >= 2 and all(seen[True]), seen[True]
