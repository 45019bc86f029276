"""Evaluation shared by recipes: next-token loss of a causal LM on packed blocks."""

from __future__ import annotations


def causal_lm_eval_loss(model, dataset, batch_size: int = 32) -> float:
    """Token-weighted mean next-token loss of `model` over a packed dataset.

    Uses the `labels` column when present (-100 is ignored), else `input_ids`. The model's train/eval mode is
    restored afterwards. An empty dataset, or one with no token to predict, raises a `ValueError` (a loss of 0, i.e.
    perplexity 1, would look like a perfect model).
    """
    import torch

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if len(dataset) == 0:
        raise ValueError(
            "The evaluation dataset is empty: no block could be formed; lower the block size or give more text."
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
                ids = torch.tensor(batch["input_ids"], device=device)
                target = torch.tensor(batch[label_key], device=device)[:, 1:]
                logits = model(input_ids=ids).logits[:, :-1].float()
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
