"""Mutation-testing kills (mu41) for the pass-35 MetadataTrainer loader changes."""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import TrainingArguments

from hf_ext.metadata import MetadataCollator, MetadataTrainer, metadata_template

from .conftest import tiny_llama

ROWS = [{"text": f"doc {i} " * (1 + i % 2), "url": f"https://h{i % 4}.org/p{i}"} for i in range(8)]


def _trainer(tmp_path, ctx_tokenizer, eval_dataset):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0, block_size=96)
    assert collator.document_attention
    args = TrainingArguments(
        str(tmp_path), max_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4, report_to="none",
        save_strategy="no", remove_unused_columns=False, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = MetadataTrainer(model=tiny_llama(len(ctx_tokenizer)), args=args, train_dataset=Dataset.from_list(ROWS),
                              eval_dataset=eval_dataset, data_collator=collator)  # fmt: skip
    return trainer, collator


def test_eval_and_test_loaders_leave_the_cache_flag_out_too(tmp_path, ctx_tokenizer):
    """Evaluation and prediction loaders collate packed batches without `use_cache` as the training loader does (an
    evaluation `IterableDataset` on several processes is dispatched as well)."""
    trainer, collator = _trainer(tmp_path, ctx_tokenizer, Dataset.from_list(ROWS))
    assert "use_cache" not in next(iter(trainer.get_eval_dataloader()))
    assert "use_cache" not in next(iter(trainer.get_test_dataloader(Dataset.from_list(ROWS))))
    assert trainer.data_collator is collator


def test_the_collator_is_restored_when_building_a_loader_fails(tmp_path, ctx_tokenizer):
    """A loader that fails to build (here: evaluation without an eval_dataset) leaves `data_collator` the user's
    collator, not the loader's wrapper (which a later `MetadataCollator` check would not recognise)."""
    trainer, collator = _trainer(tmp_path, ctx_tokenizer, None)
    with pytest.raises(ValueError):
        trainer.get_eval_dataloader()
    assert trainer.data_collator is collator
