"""PrivateTrainer (DP-SGD) fixes of audit pass ta17: `auto_find_batch_size` refused (its retries never shrank the
Poisson batch, and a retried run's accounting is not the planned one: F1)."""

import pytest
import torch
from datasets import Dataset

from hf_ext.federated.trainer import PrivateTrainingArguments


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


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--auto_find_batch_size"], "--auto_find_batch_size does not work with the '\\+dp' runs"),
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
