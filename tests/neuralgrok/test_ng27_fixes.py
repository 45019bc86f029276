"""Audit ng27 fixes."""

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


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", P), 0.5, 0.2, seed=0)


def _trainer(out, splits, coupled):
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(
        GrokDecoderConfig(vocab_size=P + 2, hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
    )
    args = NeuralGrokConfig(
        output_dir=str(out),
        gradient_transform="none",
        max_steps=2,
        per_device_train_batch_size=8,
        coupled_weight_decay=coupled,
        weight_decay=0.1,
        learning_rate=1e-2,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        report_to=[],
        save_strategy="steps",
        save_steps=1,
        logging_steps=100,
    )
    return NeuralGrokTrainer(model=model, args=args, train_dataset=splits["train"])


@pytest.mark.parametrize("coupled", [True, False])
def test_resume_with_the_other_coupled_weight_decay_is_refused_by_name_before_the_weights_load(
    splits, tmp_path, coupled
):
    # (ng27 F1) torch Adam's one param group and args.optim's decay / no-decay groups do not load into each other:
    # the resume failed with torch's "loaded state dict has a different number of parameter groups", after the
    # checkpoint's model weights had replaced the trainer's
    _trainer(tmp_path / "run", splits, coupled).train()
    resumed = _trainer(tmp_path / "resumed", splits, not coupled)
    before = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    with pytest.raises(ValueError, match=f"coupled_weight_decay={coupled} in the checkpoint, {not coupled} now"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert all(torch.equal(before[k], v) for k, v in resumed.model.state_dict().items())
    # the same flag resumes
    _trainer(tmp_path / "same", splits, coupled).train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
