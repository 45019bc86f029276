"""Evaluation shared by recipes: next-token loss of a causal LM on packed blocks, keeping a model's train mode, and a
multi-process `Trainer.evaluate()` whose loss counts every evaluation row once ([`EvalRowsOnceMixin`])."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def keeping_train_mode(model):
    """Give every module of `model` its own train/eval mode back on exit (evaluation puts a model in eval mode; a
    model with mixed modes gets each module's back). A no-op for an object that is not a `torch.nn.Module`."""
    import torch

    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def causal_lm_eval_loss(model, dataset, batch_size: int = 32) -> float:
    """Token-weighted mean next-token loss of `model` over a packed dataset.

    Uses the `labels` column when present (-100 is ignored), else `input_ids`; an `attention_mask` column is passed to
    the model and its 0 positions are not scored. A row's leading 0 positions (left padding, e.g. a tokenizer with
    `padding_side="left"`) are dropped, so every row is scored as it would be alone, without padding. Blocks of
    different lengths (`pack_dataset(..., drop_remainder=False)`'s last block) are right-padded inside a batch. The model's train/eval mode is
    restored afterwards. An empty dataset, or one with no token to predict, raises a `ValueError` (a loss of 0, i.e.
    perplexity 1, would look like a perfect model), and so do a dataset without an `input_ids` column and a
    `batch_size` that is not a positive int, before any forward pass (a `TypeError` for an object that is not a
    `datasets.Dataset`).
    """
    import torch

    from .checks import is_int

    if not is_int(batch_size) or batch_size < 1:  # True ran as 1; "4" failed naming no argument
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    columns = getattr(dataset, "column_names", None)
    if not isinstance(columns, list):
        raise TypeError(f"dataset must be a datasets.Dataset with an input_ids column, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError(
            "The evaluation dataset is empty: no block could be formed; lower the block size or give more text."
        )
    if "input_ids" not in columns:  # it was a bare KeyError
        raise ValueError(
            f"dataset has no input_ids column (columns: {columns}); pass tokenized blocks, e.g. "
            "hf_ext.data.pack_dataset(dataset, tokenizer, block_size=...)."
        )
    was_training = model.training
    device = next(model.parameters()).device
    label_key = "labels" if "labels" in dataset.column_names else "input_ids"
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = dataset[start : start + batch_size]
                ids, mask, target = _right_padded(batch, label_key, torch)
                if ids.size(1) < 2:  # no row with a token to predict (e.g. every position masked out)
                    continue
                ids, mask, target = ids.to(device), mask.to(device), target[:, 1:].to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
                )
                total += loss.item()
                count += int((target != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("The evaluation dataset has no token to predict (every label is -100 or blocks are 1 long).")
    return total / count


def _right_padded(batch, label_key: str, torch):
    """`input_ids`, `attention_mask` and targets of a batch of rows, each without its leading mask-0 positions and
    right-padded to the longest (padding: mask 0, target -100); causal attention keeps every real position's logits as
    without padding."""
    rows = batch["input_ids"]
    masks = batch.get("attention_mask") or [[1] * len(r) for r in rows]
    labels = batch[label_key]
    for i, (r, m, lab) in enumerate(zip(rows, masks, labels)):
        if not len(r) == len(m) == len(lab):
            raise ValueError(
                f"evaluation row {i} has {len(r)} input_ids, {len(m)} attention_mask and {len(lab)} {label_key} values; "
                "they must be equally long."
            )
    # a row's leading mask-0 positions (left padding) are dropped: kept, its first real token was scored from a pad
    # position that attends to nothing, and its positions were shifted by the padding
    starts = [next((j for j, v in enumerate(m) if v != 0), len(m)) for m in masks]
    width = max(len(r) - k for r, k in zip(rows, starts))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    target = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, m, lab, k) in enumerate(zip(rows, masks, labels, starts)):
        n = len(r) - k
        ids[i, :n] = torch.as_tensor(r[k:], dtype=torch.long)
        mask[i, :n] = torch.as_tensor(m[k:], dtype=torch.long)
        target[i, :n] = torch.as_tensor(lab[k:], dtype=torch.long)
    target[mask == 0] = -100
    return ids, mask, target


def _rows_kept_by_gather(trainer, inputs):
    """On the last evaluation batch of a multi-process run: a bool mask of this rank's rows that
    `accelerator.gather_for_metrics` keeps (the rest are the repeats accelerate pads the last batch with so that every
    rank gets a full batch); `None` on every rank where every row counts (one process, an earlier batch, no
    padding). A collective on the last batch: every rank calls it."""
    import torch
    from transformers.trainer_pt_utils import find_batch_size

    accelerator = trainer.accelerator
    if accelerator.num_processes < 2 or not accelerator.gradient_state.end_of_dataloader:
        return None
    rows = find_batch_size(inputs)
    if rows is None:
        return None
    # this batch's global positions (ranks' batches are equally long here: accelerate evens them out), gathered as the
    # Trainer gathers the losses; the positions that survive are the real rows
    positions = torch.arange(rows, device=trainer.args.device) + accelerator.process_index * rows
    kept = accelerator.gather_for_metrics(positions)
    if kept.numel() == rows * accelerator.num_processes:
        return None
    # the same decision on every rank (a rank whose rows are all real takes the same path as the others)
    return torch.isin(positions, kept.to(positions.device)).cpu()


def eval_rows_once_prediction_step(trainer, prediction_step, model, inputs, prediction_loss_only, ignore_keys=None):
    """`Trainer.prediction_step` whose loss, on the last batch of a multi-process evaluation, is the mean loss of this
    rank's real rows only. `prediction_step` is the Trainer's own (`super().prediction_step`).

    transformers repeats each batch's loss `eval_batch_size` times and `gather_for_metrics` keeps the first entries of
    the last gathered batch, as many as it has real rows; accelerate fills the last batch of the ranks with repeated
    rows, whose losses stayed in the mean on the real rows' entries, so `eval_loss` depended on the number of
    processes. With the loss of the real rows (the model's own loss, `compute_loss` over those rows alone, not scaled
    by the other ranks' token counts), the kept entries are exactly the one-process evaluation's: every rank evaluates
    the batches one process does (the evaluation sampler is sequential) and each row counts once. A rank without real
    rows still runs its forward pass (FSDP and DeepSpeed ZeRO-3 gather weights in it); the gather drops its loss.
    Logits and labels (for `compute_metrics`) come from the whole batch, which the gather truncates itself.

    On several processes every batch's loss is this rank's own mean, as one process computes it: with
    `average_tokens_across_devices` (transformers' default, meant for training) transformers divides each rank's
    summed loss by the mean label-token count of all ranks' batches, so batches with fewer label tokens (masked
    prefixes, padding, a short last block) weighed otherwise than in one process; the flag is off during the step.
    """
    import torch

    keep = _rows_kept_by_gather(trainer, inputs)
    labels_in = all(inputs.get(name) is not None for name in trainer.label_names) if trainer.label_names else False
    with _own_token_counts(trainer):
        if keep is None or not labels_in:
            return prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        rows = len(keep)
        real = inputs
        if bool(keep.any()):
            real = {k: v[keep.to(v.device)] if hasattr(v, "shape") and v.ndim and v.shape[0] == rows else v
                    for k, v in inputs.items()}  # fmt: skip
        real = trainer._prepare_inputs(real)
        with torch.no_grad(), trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, real).detach().mean()
        logits = labels = None
        if not prediction_loss_only:
            _, logits, labels = prediction_step(model, inputs, False, ignore_keys=ignore_keys)
    return loss, logits, labels


@contextmanager
def _own_token_counts(trainer):
    """`trainer.args.average_tokens_across_devices` off inside (on several processes): each rank's batch loss is its
    own mean over its label tokens, not its summed loss over the mean count of all ranks' batches."""
    args = trainer.args
    across = trainer.accelerator.num_processes > 1 and getattr(args, "average_tokens_across_devices", False)
    if across:
        args.average_tokens_across_devices = False
    try:
        yield
    finally:
        if across:
            args.average_tokens_across_devices = True


class EvalRowsOnceMixin:
    """`Trainer` mixin: a multi-process `evaluate()` (DDP, FSDP) reports the one-process `eval_loss`, counting every
    evaluation row once (see [`eval_rows_once_prediction_step`]). Put it before `Trainer` in the bases."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return eval_rows_once_prediction_step(
            self, super().prediction_step, model, inputs, prediction_loss_only, ignore_keys
        )
