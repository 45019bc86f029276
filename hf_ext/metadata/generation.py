"""Metadata-guided generation on top of transformers' classifier-free guidance."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .encoding import CONTEXT_BEGIN, CONTEXT_END, MetadataEncoder


def _left_pad(seqs: list[list[int]], pad_id: int):
    import torch

    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s) :] = 1
    return ids, mask


def build_guidance_inputs(
    tokenizer, prompts: Sequence[str], metadata: Sequence[str | None], layout: str = "context"
) -> dict:
    """Conditional and unconditional (empty-context) prompts, left-padded, as tensors.

    Returns a dict with `input_ids`, `attention_mask` (`[BOS] <|context_begin|>{metadata}<|context_end|>{prompt}`)
    and `negative_prompt_ids`, `negative_prompt_attention_mask` (`[BOS] <|context_begin|><|context_end|>{prompt}`,
    the unconditional form seen in training through metadata dropout).
    """
    encoder = MetadataEncoder(tokenizer, layout=layout, add_eos=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cond = encoder.encode_batch(list(prompts), list(metadata))
    uncond = encoder.encode_batch(list(prompts), [None] * len(prompts))
    ids, mask = _left_pad([d.input_ids for d in cond], pad)
    neg_ids, neg_mask = _left_pad([d.input_ids for d in uncond], pad)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "negative_prompt_ids": neg_ids,
        "negative_prompt_attention_mask": neg_mask,
    }


def generate_with_metadata_guidance(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    metadata: str | Sequence[str | None],
    guidance_scale: float = 1.5,
    layout: str = "context",
    return_text: bool = True,
    suppress_context_tokens: bool = True,
    **generate_kwargs,
):
    """Generate continuations steered towards their metadata with classifier-free guidance.

    Each prompt is conditioned on its metadata (`[BOS]<|context_begin|>{metadata}<|context_end|>{prompt}`) and
    contrasted with the same prompt under the empty context. transformers' `generate` combines the two with
    `UnbatchedClassifierFreeGuidanceLogitsProcessor`: `log p = log p_uncond + g * (log p_cond - log p_uncond)`, so
    `guidance_scale=1` is plain conditional generation and `g > 1` amplifies what the metadata adds.

    Args:
        model (`PreTrainedModel`): A causal LM trained with `MetadataCollator` (metadata dropout > 0, so the empty
            context is meaningful).
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer (with the context tokens for `layout="context"`).
        prompts (`str` or `Sequence[str]`): Prompt text(s); a batch is generated in one call.
        metadata (`str` or `Sequence[str | None]`): Metadata string per prompt (e.g. a URL or `"Science, Tutorial"`),
            or one string for all prompts.
        guidance_scale (`float`, *optional*, defaults to 1.5): `g`, a finite number > 0; 1 disables guidance.
        layout (`str`, *optional*, defaults to `"context"`): Layout used in training (`"context"` or `"meco"`).
        return_text (`bool`, *optional*, defaults to `True`): Return decoded continuations (list of `str`, one per
            returned sequence); `False` returns what `generate` returns.
        suppress_context_tokens (`bool`, *optional*, defaults to `True`): Never generate BOS or the context
            markers (they are never loss targets in training, so their scores are not meaningful). EOS is never
            suppressed, also when it is the same token as BOS (GPT-2 family).
        **generate_kwargs: Passed to `model.generate` (`max_new_tokens`, `do_sample`, `num_return_sequences`, ...).

    Example:
        ```python
        >>> texts = generate_with_metadata_guidance(model, tok, ["The function"], ["networking.docs.python.org"],
        ...                                         guidance_scale=2.0, max_new_tokens=20, do_sample=False)
        ```
    """
    import torch

    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a str or a non-empty sequence of str.")
    if isinstance(metadata, str) or metadata is None:
        metadata = [metadata] * len(prompts)
    metadata = list(metadata)
    if len(metadata) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(metadata)} metadata strings; pass one per prompt.")
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, int | float)
        or not math.isfinite(guidance_scale)
        or guidance_scale <= 0
    ):
        raise ValueError(f"guidance_scale must be a finite positive number (1 = no guidance), got {guidance_scale!r}.")
    for key in ("input_ids", "negative_prompt_ids", "guidance_scale", "attention_mask"):
        if key in generate_kwargs:
            raise ValueError(f"{key} is built from prompts and metadata; do not pass it in generate_kwargs.")

    inputs = build_guidance_inputs(tokenizer, prompts, metadata, layout)
    device = model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if suppress_context_tokens:
        # BOS is never a target in training; but where BOS == EOS (GPT-2 family) the id is also the end of text,
        # which must stay generable.
        blocked = [tokenizer.bos_token_id] if tokenizer.bos_token_id != tokenizer.eos_token_id else []
        if layout == "context":
            blocked += [tokenizer.convert_tokens_to_ids(CONTEXT_BEGIN), tokenizer.convert_tokens_to_ids(CONTEXT_END)]
        user = list(generate_kwargs.pop("suppress_tokens", None) or [])
        generate_kwargs["suppress_tokens"] = sorted(set(user) | {b for b in blocked if b is not None})
    if guidance_scale != 1:
        # generate() expands input_ids for beams / several return sequences, but not the negative prompt.
        config = model.generation_config
        beams = generate_kwargs.get("num_beams", config.num_beams) or 1
        n_return = generate_kwargs.get("num_return_sequences", config.num_return_sequences) or 1
        expand = beams if beams > 1 else n_return
        extra = {
            "negative_prompt_ids": inputs["negative_prompt_ids"].repeat_interleave(expand, dim=0),
            "negative_prompt_attention_mask": inputs["negative_prompt_attention_mask"].repeat_interleave(
                expand, dim=0
            ),
            "guidance_scale": float(guidance_scale),
        }
    else:
        extra = {}
    with torch.no_grad():
        out = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra, **generate_kwargs
        )
    if not return_text:
        return out
    sequences = out.sequences if hasattr(out, "sequences") else out
    prompt_len = inputs["input_ids"].shape[1]
    return tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
