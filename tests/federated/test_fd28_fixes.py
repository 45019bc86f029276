"""DP-SGD refuses a collator that packs a Poisson batch into fewer rows than examples (a padding-free
`DataCollatorWithFlattening` made the whole batch one "example" for the per-row clipping, so the reported epsilon was
that of twice the noise the run had), and `measure_memorization` refuses a `batch_size` below 1 (a negative one probed
no canary and reported no memorization) (fd28)."""

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithFlattening, default_data_collator

from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments, make_canaries, measure_memorization

from .conftest import tiny_llama


def _dp_args(tmp_path, **extra):
    return PrivateTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-3,
        dp_clip_norm=1.0,
        dp_noise_multiplier=1.0,
        max_grad_norm=0.0,
        dp_noise_seed=0,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        **extra,
    )


def _rows(n: int = 8, length: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def test_dp_sgd_refuses_a_collator_that_merges_examples_into_one_row(tmp_path):
    model = tiny_llama(256)
    start = {k: v.clone() for k, v in model.named_parameters()}
    trainer = PrivateTrainer(
        model=model, args=_dp_args(tmp_path), train_dataset=_rows(), data_collator=DataCollatorWithFlattening()
    )
    with pytest.raises(
        ValueError, match=r"DataCollatorWithFlattening turned a Poisson batch of 2 examples into 1 row"
    ):
        trainer.train()
    assert trainer.accountant.steps == 0  # refused before any DP step
    assert all(torch.equal(p, start[k]) for k, p in model.named_parameters())


def test_dp_sgd_accepts_a_collator_with_one_row_per_example(tmp_path):
    trainer = PrivateTrainer(
        model=tiny_llama(256), args=_dp_args(tmp_path), train_dataset=_rows(), data_collator=default_data_collator
    )
    trainer.train()
    assert trainer.accountant.steps == 1


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5])
def test_measure_memorization_refuses_a_batch_size_below_one(small_tokenizer, batch_size):
    canaries = make_canaries(2, {1: 1.0}, num_words=25)
    model = tiny_llama(len(small_tokenizer))
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1"):
        measure_memorization(model, small_tokenizer, canaries, (5,), window=20, batch_size=batch_size)


@pytest.mark.parametrize(
    "flag, value", [("--lora_learning_rate", "nan"), ("--lora_learning_rate", "-1"), ("--full_learning_rate", "inf")]
)
def test_recipe_refuses_a_bad_learning_rate_before_touching_earlier_results(tmp_path, flag, value):
    from hf_ext.recipes import federated

    from .conftest import tiny_recipe_args

    (tmp_path / "results.json").write_text('{"earlier": "run"}')
    with pytest.raises(ValueError, match=rf"^{flag} must be a finite number >= 0"):
        federated.main([*tiny_recipe_args(), "--configs", "full,lora", flag, value, "--output_dir", str(tmp_path)])
    assert (tmp_path / "results.json").read_text() == '{"earlier": "run"}'
    assert not (tmp_path / "pretrain").exists()
