"""One intra-op thread for these tests: the tiny matmuls of the amplifier slow down badly when BLAS threads fight
over shared cores. The previous setting is restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_amplified_trainer():
    """A builder of a 2-step NeuralGrokTrainer on a+b mod 11 (output_dir `<folder>/out`) with `amplifier` (default: a
    fresh (4,) one); keyword arguments go to its NeuralGrokConfig."""

    def build(folder, amplifier=None, **kw):
        from hf_ext.neuralgrok import (
            GrokDecoderConfig,
            GrokDecoderForCausalLM,
            NeuralAmplifier,
            NeuralGrokConfig,
            NeuralGrokTrainer,
            build_arithmetic_dataset,
            split_arithmetic_dataset,
        )

        splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)
        torch.manual_seed(0)
        model = GrokDecoderForCausalLM(
            GrokDecoderConfig(vocab_size=13, hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
        )
        options = dict(max_steps=2, per_device_train_batch_size=8, outer_every=1, amplifier_hidden_dims=[4])
        args = NeuralGrokConfig(
            output_dir=str(folder / "out"), use_cpu=True, report_to=[], disable_tqdm=True, **{**options, **kw}
        )
        return NeuralGrokTrainer(
            model=model,
            args=args,
            train_dataset=splits["inner"],
            outer_dataset=splits["outer"],
            amplifier=NeuralAmplifier((4,)) if amplifier is None else amplifier,
        )

    return build
