"""Goldfish loss (Hans et al. 2024): drop a pseudo-random 1/k of the target tokens from the loss, keyed by a hash of
the `h` tokens ending at the target, so repeated passages always drop the same tokens and are never learned verbatim.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

GOLDFISH_TABLE_SIZE = 1_000_003
GOLDFISH_TABLE_SEED = 2971215073
_TABLE: torch.Tensor | None = None


def goldfish_table() -> torch.Tensor:
    """The hash table of uniform floats used by the `hash-table` rule, always built on CPU so that masks do not depend
    on the training device (the reference builds it on the training device, so its CPU and CUDA masks differ)."""
    global _TABLE
    if _TABLE is None:
        gen = torch.Generator(device="cpu").manual_seed(GOLDFISH_TABLE_SEED)
        _TABLE = torch.rand(GOLDFISH_TABLE_SIZE, generator=gen)
    return _TABLE


def _check(k: int, context_width: int) -> None:
    # numbers.Integral: a numpy integer is an integer too (not a bool)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2:
        raise ValueError(f"Goldfish `k` must be an integer >= 2 (drop 1/k of the tokens), got {k!r}.")
    if isinstance(context_width, bool) or not isinstance(context_width, numbers.Integral) or context_width < 1:
        raise ValueError(f"Goldfish `context_width` must be an integer >= 1, got {context_width!r}.")


def goldfish_drop_mask(targets: torch.Tensor, k: int, context_width: int = 13) -> torch.Tensor:
    """Which targets the Goldfish `hash-table` rule drops.

    Target `t` (for `t >= context_width - 1`) is dropped iff `table[prod(targets[t - h + 1 : t + 1]) mod 1_000_003]`
    is below `1 / k`, with the product taken in int64 (wrapping, as in the reference). The first `h - 1` positions
    are never dropped.

    Args:
        targets (`torch.Tensor`): int64 next-token targets of shape `(batch, length)`.
        k (`int`): drop about one token in `k` (>= 2).
        context_width (`int`, *optional*, defaults to 13): the hashed window width `h`.

    Returns:
        `torch.Tensor`: a bool tensor like `targets`, `True` where the target is dropped.
    """
    _check(k, context_width)
    k, context_width = int(k), int(context_width)
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2:
        raise ValueError(f"`targets` must be a tensor of shape (batch, length), got {getattr(targets, 'shape', targets)}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(
            f"`targets` must hold integer token ids, got dtype {targets.dtype}: the window products of non-integer "
            "values are not the reference's hash (floats in [0, 1) all hash to key 0)."
        )
    mask = torch.zeros(targets.shape, dtype=torch.bool, device=targets.device)
    if targets.shape[1] < context_width:
        return mask
    windows = targets.detach().to("cpu", torch.int64).unfold(1, context_width, 1)
    keys = torch.remainder(windows.prod(dim=-1), GOLDFISH_TABLE_SIZE)
    drop = goldfish_table()[keys] < 1.0 / k
    mask[:, context_width - 1 :] = drop.to(targets.device)
    return mask


def apply_goldfish(
    labels: torch.Tensor,
    k: int,
    context_width: int = 13,
    input_ids: torch.Tensor | None = None,
    ignore_index: int = -100,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return a copy of HF causal-LM `labels` with the Goldfish-dropped targets set to `ignore_index`.

    HF models shift labels inside the loss, so the target sequence is `labels[:, 1:]`; windows are hashed over the
    token ids (`input_ids[:, 1:]` when given, else the labels with ignored positions hashed as `ignore_index`). With
    an `attention_mask`, each row's windows are hashed over its real tokens only, so a sequence drops the same tokens
    however it is padded (left padding used to put pad ids into the windows of its first targets).

    Args:
        labels (`torch.Tensor`): `(batch, length)` labels, `ignore_index` where no loss is taken.
        k (`int`): drop about 1/k of the targets (>= 2).
        context_width (`int`, *optional*, defaults to 13): hashed window width `h`.
        input_ids (`torch.Tensor`, *optional*): token ids aligned with `labels`.
        ignore_index (`int`, *optional*, defaults to -100): label value ignored by the loss.
        attention_mask (`torch.Tensor`, *optional*): 1 on real tokens, 0 on padding (left or right), aligned with
            `labels`.

    A row with fewer than `context_width` targets has none dropped (its first `h - 1` targets never are): the call
    then warns once (a `UserWarning`, not one per row).
    """
    _check(k, context_width)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError(
            f"`labels` must be a tensor of shape (batch, length), got {getattr(labels, 'shape', labels)}: add the batch "
            "dimension (labels[None]) for a single sequence."
        )
    if input_ids is not None and input_ids.shape != labels.shape:
        raise ValueError(f"`input_ids` {tuple(input_ids.shape)} and `labels` {tuple(labels.shape)} differ in shape.")
    if attention_mask is not None and attention_mask.shape != labels.shape:
        raise ValueError(
            f"`attention_mask` {tuple(attention_mask.shape)} and `labels` {tuple(labels.shape)} differ in shape."
        )
    source = input_ids if input_ids is not None else labels
    out = labels.clone()
    if attention_mask is None or bool(attention_mask.all()):
        if labels.shape[0] and 1 <= labels.shape[1] - 1 < context_width:
            _warn_short_rows(context_width)
        drop = goldfish_drop_mask(source[:, 1:], k, context_width)
        out[:, 1:][drop] = ignore_index
        return out
    real = attention_mask.bool()
    targets = real.sum(dim=1) - 1
    if bool(((targets >= 1) & (targets < context_width)).any()):
        _warn_short_rows(context_width)
    for row in range(labels.shape[0]):
        positions = real[row].nonzero().flatten()
        if positions.numel() < 2:
            continue
        # the row's real tokens as one unpadded sequence; target j of it sits at positions[j] (j >= 1)
        drop = goldfish_drop_mask(source[row, positions][1:].unsqueeze(0), k, context_width)[0]
        out[row, positions[1:][drop]] = ignore_index
    return out


def _warn_short_rows(context_width: int) -> None:
    """One warning per call, never per row, with a text that depends on `h` only, so that Python's default warning
    filter shows it once per process: rows with fewer than `h` targets have no Goldfish drop at all."""
    warnings.warn(
        f"Goldfish: a row has fewer targets than the hashed window h = {context_width}, and the first h - 1 targets "
        "of a row are never dropped: none of its tokens is dropped, it is trained on as with the plain loss. Use a "
        "context width below the sequence length (goldfish_context_width; recipe --defense_goldfish_context_width).",
        UserWarning,
        stacklevel=3,
    )


@dataclass
class GoldfishCollator:
    """Wrap a data collator so that its `labels` get the Goldfish drops (works with `Trainer` and TRL).

    Args:
        base_collator (`Callable`): the collator producing `input_ids` and `labels` (e.g. `default_data_collator`).
        k (`int`, *optional*, defaults to 4): drop about 1/k of the target tokens.
        context_width (`int`, *optional*, defaults to 13): hashed window width.
    """

    base_collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    k: int = field(default=4, metadata={"help": "Drop about 1/k of the target tokens (>= 2)."})
    context_width: int = field(default=13, metadata={"help": "Number of tokens hashed to decide each drop."})

    def __post_init__(self):
        _check(self.k, self.context_width)
        if not callable(self.base_collator):
            raise TypeError("`base_collator` must be callable (e.g. transformers.default_data_collator).")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base_collator(features)
        if "labels" not in batch or "input_ids" not in batch:
            raise ValueError("GoldfishCollator needs `input_ids` and `labels` from the base collator.")
        mask = batch.get("attention_mask")
        batch["labels"] = apply_goldfish(
            batch["labels"], self.k, self.context_width, batch["input_ids"], attention_mask=mask
        )
        return batch
