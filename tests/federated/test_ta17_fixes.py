"""PrivateTrainer (DP-SGD) fixes of audit pass ta17: `auto_find_batch_size` refused (its retries never shrank the
Poisson batch, and a retried run's accounting is not the planned one: F1), a `train_sampling_strategy` the Poisson
sampler replaces refused, and `dataloader_num_workers` honoured with exact resumes (F7)."""

import pytest
import torch
from datasets import Dataset

from hf_ext.federated.trainer import PrivateTrainer, PrivateTrainingArguments

from .conftest import tiny_llama


def _data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 12), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, max_grad_norm=0, dp_clip_norm=1.0,
                dp_noise_multiplier=1.0, dp_noise_seed=5, learning_rate=1e-2, report_to="none", disable_tqdm=True,
                save_strategy="no", use_cpu=True, seed=0, data_seed=0)  # fmt: skip
    return PrivateTrainingArguments(**{**base, **kw})


# ---- F1: auto_find_batch_size ------------------------------------------------------------------------------------


def test_auto_find_batch_size_is_refused_with_dp_sgd(tmp_path):
    """Its out-of-memory retries lowered the Trainer's batch size, but the Poisson sampler and the noise divisor kept
    per_device_train_batch_size: every retry drew batches of the same expected size (8 -> 7 -> ... -> 1, then 'No
    executable batch size found'). Changing q mid-run would also change the accounting, so it is refused."""
    with pytest.raises(ValueError, match="--auto_find_batch_size.*DP-SGD.*--per_device_train_batch_size"):
        _args(tmp_path, auto_find_batch_size=True)


def test_auto_find_batch_size_is_accepted_without_dp_sgd(tmp_path):
    args = _args(tmp_path, auto_find_batch_size=True, dp_clip_norm=None, dp_noise_multiplier=0.0, goldfish_k=4)
    assert args.auto_find_batch_size


# ---- F7: train_sampling_strategy and dataloader_num_workers --------------------------------------------------------


@pytest.mark.parametrize("strategy", ["group_by_length", "sequential", "batch_rebalance"])
def test_train_sampling_strategy_is_refused_with_dp_sgd(tmp_path, strategy):
    """DP-SGD draws Poisson batches (the accountant's assumption): another strategy was accepted and ignored."""
    with pytest.raises(ValueError, match=f"--train_sampling_strategy {strategy}.*Poisson.*'random'"):
        _args(tmp_path, train_sampling_strategy=strategy)


def test_train_sampling_strategy_is_kept_without_dp_sgd(tmp_path):
    args = _args(tmp_path, train_sampling_strategy="sequential", dp_clip_norm=None, dp_noise_multiplier=0.0)
    trainer = PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data())
    assert type(trainer._get_train_sampler()).__name__ == "SequentialSampler"


def _weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_dataloader_num_workers_is_honoured_and_resume_stays_exact(tmp_path):
    """The DP-SGD loader was built with num_workers=0 whatever dataloader_num_workers said. Workers now read and
    collate the Poisson batches, which the sampler still draws in the main process: the run equals the one without
    workers, and a resume with workers equals the uninterrupted run."""
    plain = PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path / "w0"), train_dataset=_data())
    plain.train()

    args = _args(tmp_path / "w2", dataloader_num_workers=2, save_strategy="steps", save_steps=2)
    trainer = PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data())
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 2
    assert type(loader.batch_sampler).__name__ == "PoissonBatchSampler"
    trainer.train()
    for a, b in zip(_weights(plain), _weights(trainer)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)

    resumed = PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data())
    resumed.train(resume_from_checkpoint=str(tmp_path / "w2" / "checkpoint-2"))
    for a, b in zip(_weights(trainer), _weights(resumed)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert resumed.privacy_spent() == trainer.privacy_spent()


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--auto_find_batch_size"], "--auto_find_batch_size does not work with the '\\+dp' runs"),
        (
            ["--train_sampling_strategy", "group_by_length"],
            "--train_sampling_strategy group_by_length would be ignored",
        ),
    ],
)
def test_recipe_refuses_them_before_anything_runs(tmp_path, extra, match):
    """The recipe's '+dp' runs would refuse them only when the loop reached them (after the earlier runs)."""
    import os

    from hf_ext.recipes.federated import main

    from .conftest import tiny_recipe_args

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), "--configs", "lora,lora+dp", *tiny_recipe_args(), *extra])
    assert not os.path.exists(out)
