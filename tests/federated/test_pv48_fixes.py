"""DP-SGD refuses a Poisson batch without `labels` by name before the first step (it failed inside the first step with a
bare `KeyError: 'labels'`), and attacker-side checks of the released DP-SGD step in PrivateTrainer (pv48)."""

import pytest
import torch
from datasets import Dataset
from transformers import default_data_collator

from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments, dp_gradient

from .conftest import tiny_llama


def _args(tmp_path, **extra):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        dp_clip_norm=1.0,
        dp_noise_multiplier=1.0,
        max_grad_norm=0.0,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    base.update(extra)
    return PrivateTrainingArguments(**base)


def test_dp_sgd_refuses_a_batch_without_labels_by_name_before_training(tmp_path):
    ids = torch.randint(0, 32, (12, 10)).tolist()
    trainer = PrivateTrainer(
        model=tiny_llama(32),
        args=_args(tmp_path),
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        data_collator=default_data_collator,
    )
    with pytest.raises(ValueError, match="without a `labels` tensor") as err:
        trainer.get_train_dataloader()  # the collator probe, before any step
    assert "default_data_collator" in str(err.value) and "--dp_clip_norm" in str(err.value)
    with pytest.raises(ValueError, match="without a `labels` tensor"):
        trainer.train()
    assert trainer.state.global_step == 0 and trainer.accountant.steps == 0


def test_dp_sgd_with_labels_still_trains(tmp_path):
    ids = torch.randint(0, 32, (12, 10)).tolist()
    trainer = PrivateTrainer(
        model=tiny_llama(32),
        args=_args(tmp_path, dp_noise_seed=0),
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        data_collator=default_data_collator,
    )
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.accountant.steps == 1


def test_trainer_step_adds_noise_of_std_sigma_c_to_the_clipped_sum(tmp_path):
    """The attacker sees the released gradient: times the expected batch size, minus the clean clipped sum, it must be
    N(0, (sigma C)^2) per coordinate (measured over many steps), not e.g. noise divided by the realised batch."""
    torch.manual_seed(0)
    ids = torch.randint(0, 32, (40, 10))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    clip, sigma, batch_size = 0.05, 1.3, 8
    model = tiny_llama(32)
    trainer = PrivateTrainer(
        model=model,
        args=_args(tmp_path, per_device_train_batch_size=batch_size, dp_clip_norm=clip, dp_noise_multiplier=sigma),
        train_dataset=data,
        data_collator=default_data_collator,
    )
    batch = default_data_collator([data[i] for i in range(5)])  # a realised batch of 5, expected size 8
    clean, _ = dp_gradient(model, batch["input_ids"], batch["labels"], clip, 0.0, expected_batch_size=batch_size)
    residuals = []
    for _ in range(30):
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(batch))
        for name, p in model.named_parameters():
            residuals.append(((p.grad.double() - clean[name].double()) * batch_size).flatten())
    noise = torch.cat(residuals)
    assert noise.numel() > 100_000
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * sigma * clip
    assert trainer.accountant.steps == 30
