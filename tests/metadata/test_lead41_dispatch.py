"""`MetadataTrainer` leaves a packed batch's `use_cache=False` (a Python bool) out of its loaders' batches, which
accelerate's batch dispatching (an `IterableDataset` on several processes) cannot concatenate, and passes it to the
model itself. The 2-rank dispatched run is in test_recipe_distributed.py (`packed`); here one process: the model is
called with `use_cache=False` also where `TrainingArguments(use_cache=True)` sets the config's, in training and
evaluation, and the batches equal the collator's own without that key."""

import torch
from datasets import Dataset
from transformers import TrainingArguments

from hf_ext.metadata import MetadataCollator, MetadataTrainer, metadata_template

from .conftest import tiny_llama

ROWS = [{"text": f"doc {i} " * (1 + i % 2), "url": f"https://h{i % 4}.org/p{i}"} for i in range(12)]


def _trainer(tmp_path, collator, model, calls, **args):
    class Recording(MetadataTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            calls.append((model.training, inputs.get("use_cache"), model.config.use_cache))
            return super().compute_loss(model, inputs, *a, **k)

    args = TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, report_to="none",
        save_strategy="no", remove_unused_columns=False, use_cpu=True, seed=0, disable_tqdm=True, **args,
    )  # fmt: skip
    ds = Dataset.from_list(ROWS)
    return Recording(model=model, args=args, train_dataset=ds, eval_dataset=ds, data_collator=collator)


def test_packed_batches_reach_the_model_with_use_cache_false_and_leave_the_loader_without_it(tmp_path, ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0, block_size=96)
    assert collator.document_attention
    calls = []
    trainer = _trainer(tmp_path, collator, tiny_llama(len(ctx_tokenizer)), calls, use_cache=True)
    loader_batch = next(iter(trainer.get_train_dataloader()))
    assert "use_cache" not in loader_batch  # a tensor-only batch: accelerate can concatenate it
    own = collator([ROWS[i] for i in range(4)])
    assert own.pop("use_cache") is False  # the collator itself still carries it (for a hand-written loop)
    assert trainer.get_train_dataloader().collate_fn.data_collator is collator  # what the cooldown callback unwraps
    trainer.train()
    trainer.evaluate()
    assert trainer.model.config.use_cache is True  # so the flag matters: a cache would skip the per-document masks
    assert {c[:2] for c in calls} == {(True, False), (False, False)}
    assert trainer.data_collator is collator  # restored after each loader was built


def test_padded_batches_are_collated_as_before(tmp_path, ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0)
    assert not collator.document_attention
    calls = []
    trainer = _trainer(tmp_path, collator, tiny_llama(len(ctx_tokenizer)), calls)
    assert trainer.get_train_dataloader().collate_fn is collator
    trainer.train()
    assert {c[1] for c in calls} == {None}


def test_document_attention_loss_equals_the_masked_forward(tmp_path, ctx_tokenizer):
    """With TrainingArguments(use_cache=True) the trained loss is the per-document one (use_cache=False), not the
    whole-row attention a cache would give."""
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0, block_size=96)
    model = tiny_llama(len(ctx_tokenizer))
    batch = collator([ROWS[i] for i in range(4)])
    batch.pop("use_cache")
    model.config.use_cache = True
    with torch.no_grad():
        masked = model(**batch, use_cache=False).loss.item()
        whole_row = model(**batch).loss.item()
    assert abs(masked - whole_row) > 1e-4  # the two differ on this batch
    trainer = _trainer(tmp_path, collator, model, [], use_cache=True)
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer._prepare_inputs(dict(batch))).item()
    assert abs(loss - masked) < 1e-6
