"""Metadata-guided generation on top of transformers' classifier-free guidance."""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from ..utils.checks import is_bool, is_int
from .encoding import CONTEXT_BEGIN, CONTEXT_END, MetadataEncoder, check_model_embeds, check_tokenizer
from .templates import is_missing, normalize_url

logger = logging.getLogger(__name__)


def _padding_invariant_positions(model) -> bool:
    """Whether the model's outputs do not depend on a shift of all positions (rotary embeddings: Llama, Mistral, ...)."""
    config = getattr(model, "config", None)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    # a converted model (layer pairing) keeps its source's position settings in `source_config`
    configs = [config, getattr(config, "source_config", None)]
    names = ("rope_parameters", "rope_theta", "rotary_dim")
    return any(getattr(c, name, None) is not None for c in configs if c is not None for name in names)


def _is_generation_config(value) -> bool:
    from transformers import GenerationConfig

    return isinstance(value, GenerationConfig)


def _generation_setting(name: str, generate_kwargs: dict, gen_config, model):
    """A generation setting as `generate()` resolves it: kwargs, then the passed config, then the model's."""
    for source in (generate_kwargs, gen_config, model.generation_config):
        value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def _stack_prompt_outputs(outputs: list, prompt_lengths: list[int], prompt_pad: int, new_pad: int):
    """Per-prompt `generate` outputs as one batch, as a batched call lays it out: each prompt left-padded to the longest
    prompt with `prompt_pad`, each continuation right-padded to the longest with `new_pad`."""
    import torch

    longest_prompt = max(prompt_lengths)
    longest_new = max(out.shape[1] - n for out, n in zip(outputs, prompt_lengths))
    rows = []
    for out, n in zip(outputs, prompt_lengths):
        left = out.new_full((out.shape[0], longest_prompt - n), prompt_pad)
        right = out.new_full((out.shape[0], longest_new - (out.shape[1] - n)), new_pad)
        rows.append(torch.cat([left, out, right], dim=1))
    return torch.cat(rows, dim=0)


def _prompt_pad_id(tokenizer) -> int:
    """The id that left-pads the guidance prompts: the tokenizer's pad, else its EOS; a `ValueError` naming
    `tokenizer` where it has neither."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError(
        f"the tokenizer ({type(tokenizer).__name__}) has neither a pad_token nor an eos_token, so the guidance prompts "
        "cannot be left-padded to one length; set tokenizer.pad_token first (the padding is masked, so a token the "
        "model already has will do, e.g. tokenizer.pad_token = tokenizer.bos_token)."
    )


def _left_pad(seqs: list[list[int]], pad_id: int):
    import torch

    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s) :] = 1
    return ids, mask


def _ordered(value, name: str, expected: str, fix: str = "") -> list:
    """`value` (a list, tuple or other ordered, sized container: a `datasets` column, a numpy array) as a list; a
    `TypeError` naming `name` for a mapping (its keys would be read), a set (no order) or a one-shot iterator."""
    if isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be {expected}, got a {type(value).__name__} (its keys would be read as the {name}){fix}."
        )
    if isinstance(value, AbstractSet | bytes | bytearray) or not (
        isinstance(value, Sequence) or (hasattr(value, "__len__") and hasattr(value, "__getitem__"))
    ):
        raise TypeError(
            f"{name} must be {expected}, got a {type(value).__name__} (an ordered container with one entry per "
            f"prompt is needed: pass a list){fix}."
        )
    return list(value)


def _prompt_lists(prompts, metadata) -> tuple[list[str], list[str | None]]:
    """`prompts` and `metadata` as lists of equal length: a str prompt is one prompt, a str (or `None`) metadata is
    the metadata of every prompt, otherwise a list or tuple (an ordered container) with one entry per prompt;
    `TypeError` / `ValueError` for anything else (a dict, e.g. a dataset row, a set, a generator). Each metadata
    string is read as the templates read a value in training: blank (`""`, `"   "`, `"\\n"`) is `None`, and surrounding
    whitespace is stripped (`normalize_url`)."""
    prompts = [prompts] if isinstance(prompts, str) else _ordered(prompts, "prompts", "a str or a list/tuple of str")
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a str or a non-empty sequence of str.")
    if isinstance(metadata, str) or metadata is None:
        metadata = [metadata] * len(prompts)
    metadata = _ordered(
        metadata,
        "metadata",
        "a str, None, or a list/tuple of str/None (one per prompt)",
        "; a dataset row goes through the template the model was trained with first: "
        "metadata=metadata_template(...)(row), or [template(row) for row in rows]",
    )
    if not all(m is None or isinstance(m, str) for m in metadata):
        bad = next(m for m in metadata if not (m is None or isinstance(m, str)))
        raise TypeError(
            f"metadata must be a str or a sequence of str/None (one per prompt), got a {type(bad).__name__}."
        )
    if len(metadata) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(metadata)} metadata strings; pass one per prompt.")
    # as the templates read a value in training: a blank string is no metadata (the unconditional prompt), and
    # surrounding whitespace is stripped (" https://a.org/x\n" trained as https://a.org/x)
    return prompts, [None if is_missing(m) else normalize_url(m, "metadata") for m in metadata]


def build_guidance_inputs(
    tokenizer,
    prompts: str | Sequence[str],
    metadata: str | Sequence[str | None] | None,
    layout: str = "context",
    max_metadata_tokens: int | None = None,
) -> dict:
    """Conditional and unconditional (empty-context) prompts, left-padded, as tensors.

    `prompts` and `metadata` are read as by `generate_with_metadata_guidance`: a str prompt is a batch of one, a str
    (or `None`) metadata applies to every prompt, otherwise one metadata entry (str or `None`) per prompt; a blank
    metadata string is `None` and whitespace around one is stripped, as the templates read a value in training.

    Returns a dict with `input_ids`, `attention_mask` (`[BOS] <|context_begin|>{metadata}<|context_end|>{prompt}`)
    and `negative_prompt_ids`, `negative_prompt_attention_mask` (`[BOS] <|context_begin|><|context_end|>{prompt}`,
    the unconditional form seen in training through metadata dropout). `max_metadata_tokens` cuts the metadata as
    `MetadataCollator(max_metadata_tokens=...)` did in training, so the prefix is the one the model was trained on.
    """
    prompts, metadata = _prompt_lists(prompts, metadata)
    encoder = MetadataEncoder(tokenizer, layout=layout, add_eos=False, max_metadata_tokens=max_metadata_tokens)
    pad = _prompt_pad_id(tokenizer)
    cond = encoder.encode_batch(prompts, metadata)
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
    guidance_scale: float | None = None,
    layout: str = "context",
    return_text: bool = True,
    suppress_context_tokens: bool = True,
    max_metadata_tokens: int | None = None,
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
            a list or tuple in prompt order, or one string for all prompts. Read as the templates read a value in
            training: a blank string (`"   "`) is no metadata (`None`: the empty context) and whitespace around a
            string is stripped (`" https://a.org/x\\n"` is `https://a.org/x`, as the URL templates train it). A dict
            (a dataset row: build its string with the training template, `metadata_template(...)(row)`), a set or a
            generator raise a `TypeError`.
        guidance_scale (`float`, *optional*): `g`, a finite number > 0; 1 disables guidance. Defaults to the
            `guidance_scale` of a passed `generation_config` where it sets one (as `generate()` reads it), else 1.5.
            An explicit value wins over the passed config's and the model's own `generation_config`.
        layout (`str`, *optional*, defaults to `"context"`): Layout used in training (`"context"` or `"meco"`).
        return_text (`bool`, *optional*, defaults to `True`): Return decoded continuations (list of `str`, one per
            returned sequence); `False` returns what `generate` returns. For a model without rotary embeddings
            (GPT-2 family) and prompts of different token lengths, the prompts are generated one by one (transformers'
            guidance would read the padded unconditional prompts from shifted positions) and the sequences are
            laid out as a batched call would; only `return_dict_in_generate=True` is then generated batched (warned),
            and a `streamer` raises a `ValueError` (each call would end the stream).
        suppress_context_tokens (`bool`, *optional*, defaults to `True`): Never generate BOS or the context
            markers (they are never loss targets in training, so their scores are not meaningful). EOS is never
            suppressed, also when it is the same token as BOS (GPT-2 family).
        max_metadata_tokens (`int`, *optional*): The `max_metadata_tokens` the model was trained with
            (`MetadataCollator`): the metadata is cut exactly as in training. `None` keeps all of it.
        **generate_kwargs: Passed to `model.generate` (`max_new_tokens`, `do_sample`, `num_return_sequences`, ...,
            or a `generation_config`, whose `num_return_sequences` and `suppress_tokens` count as if passed
            directly; it must be a `GenerationConfig`, a `TypeError` otherwise). With `guidance_scale != 1`, beam
            search (`num_beams > 1`) and assisted decoding raise a `ValueError`: transformers' guidance processor
            cannot follow them (a `num_beams` that is not an int raises a `ValueError` naming it).

    Example:
        ```python
        >>> texts = generate_with_metadata_guidance(model, tok, ["The function"], ["networking.docs.python.org"],
        ...                                         guidance_scale=2.0, max_new_tokens=20, do_sample=False)
        ```
    """
    import torch

    if not (hasattr(model, "generate") and hasattr(model, "generation_config")):
        raise TypeError(
            f"generate_with_metadata_guidance: model must be a generative model object (a PreTrainedModel with "
            f"generate()), got {type(model).__name__} {model!r:.80}; load it first, e.g. "
            "AutoModelForCausalLM.from_pretrained(name)."
        )
    check_tokenizer(tokenizer, "generate_with_metadata_guidance")
    prompts, metadata = _prompt_lists(prompts, metadata)
    for name, value in (("return_text", return_text), ("suppress_context_tokens", suppress_context_tokens)):
        if not is_bool(value):  # a string such as "false" would be truthy and silently mean True
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    built = ("input_ids", "attention_mask", "negative_prompt_ids", "negative_prompt_attention_mask", "guidance_scale")
    for key in built:
        if key in generate_kwargs:
            raise ValueError(f"{key} is built from prompts and metadata; do not pass it in generate_kwargs.")

    passed = generate_kwargs.get("generation_config")
    if passed is not None and not _is_generation_config(passed):
        # our settings go into a copy of it: a dict failed there with a raw AttributeError ('dict' object has no
        # attribute 'pad_token_id'), as generate() itself fails on one ('max_length')
        raise TypeError(
            f"generation_config must be a transformers GenerationConfig, got a {type(passed).__name__} "
            f"({passed!r:.80}); pass GenerationConfig(**settings), or the settings as keyword arguments "
            "(max_new_tokens=..., do_sample=...)."
        )
    source = "guidance_scale"
    if guidance_scale is None:
        # as generate() reads a passed generation_config (the model's own is not read: its scale was set for other
        # prompts); the function's default 1.5 otherwise. Before md51 the default replaced the config's scale silently.
        configured = getattr(passed, "guidance_scale", None)
        guidance_scale, source = (1.5, source) if configured is None else (configured, "generation_config.guidance_scale")
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, numbers.Real)  # numpy scalars too
        or not math.isfinite(guidance_scale)
        or guidance_scale <= 0
    ):
        raise ValueError(f"{source} must be a finite number > 0 (1 = no guidance), got {guidance_scale!r}.")

    inputs = build_guidance_inputs(tokenizer, prompts, metadata, layout, max_metadata_tokens=max_metadata_tokens)
    # a model left at its old size after add_context_tokens(tokenizer) fails in the embedding lookup with a raw
    # IndexError otherwise
    used = torch.cat([inputs["input_ids"].flatten(), inputs["negative_prompt_ids"].flatten()]).unique().tolist()
    check_model_embeds(model, tokenizer, used, "the guidance prompts hold")
    neg_padded = bool((inputs["negative_prompt_attention_mask"] == 0).any())
    if guidance_scale != 1 and neg_padded and not _padding_invariant_positions(model):
        # transformers runs the unconditional branch without position_ids: with left padding its learned absolute
        # positions (GPT-2 family) are shifted by the padding. Text and sequences are generated prompt by prompt,
        # unpadded; a dict output (scores, ...) cannot be merged cleanly and is generated batched, with a warning.
        passed_config = generate_kwargs.get("generation_config")
        wants_dict = _generation_setting("return_dict_in_generate", generate_kwargs, passed_config, model)
        if return_text or not wants_dict:
            if generate_kwargs.get("streamer") is not None:
                # each call below ends the stream: a TextIteratorStreamer stopped after the first prompt's text, and
                # the other prompts' tokens were silently never streamed (a batched call refuses a streamer for them)
                raise ValueError(
                    f"streamer with {len(prompts)} prompts of different token lengths on {type(model).__name__} (no "
                    "rotary position embeddings): guidance generates such prompts one by one, and each call would end "
                    "the stream. Stream one prompt per call."
                )
            # A batched call counts max_length / min_length over the padded width, so every prompt gets the same
            # number of new tokens; one by one, each prompt would count from its own length. Pass them as new tokens.
            per_prompt = dict(generate_kwargs)
            width = inputs["input_ids"].shape[1]
            for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
                if _generation_setting(new, per_prompt, passed_config, model) is None:
                    value = _generation_setting(total, per_prompt, passed_config, model)
                    if value is not None and value > width:
                        per_prompt.pop(total, None)
                        per_prompt[new] = value - width
                    elif value and total == "min_length":
                        # min_length <= the padded width is met by every padded prompt of a batched call: no minimum
                        # (0 also overrides a min_length from the passed or the model's generation config)
                        per_prompt[total] = 0
            outputs = [
                generate_with_metadata_guidance(
                    model, tokenizer, [prompt], [meta], guidance_scale, layout=layout, return_text=return_text,
                    suppress_context_tokens=suppress_context_tokens, max_metadata_tokens=max_metadata_tokens,
                    **per_prompt,
                )
                for prompt, meta in zip(prompts, metadata)
            ]  # fmt: skip
            if return_text:
                return [text for texts in outputs for text in texts]
            # the pad a batched call uses: the passed one, else the tokenizer's (set below), else EOS
            prompt_pad = _prompt_pad_id(tokenizer)
            new_pad = generate_kwargs.get("pad_token_id")
            if new_pad is None:
                new_pad = getattr(passed_config, "pad_token_id", None)
            if new_pad is None:
                new_pad = prompt_pad
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            return _stack_prompt_outputs(outputs, lengths, prompt_pad, new_pad)
        logger.warning(
            "%s has no rotary position embeddings, and the batch's unconditional prompts are left-padded: "
            "transformers' guidance runs them without position_ids, so their positions are shifted by the padding. "
            "With return_dict_in_generate=True the batch is generated as one; use prompts of equal token length or "
            "one prompt per call for exact guidance.",
            type(model).__name__,
        )
    device = model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    # A passed generation_config is honoured as generate() does: kwargs > generation_config > model.generation_config.
    # Our own settings go into a copy of it (generate() warns when a generation_config is mixed with setting kwargs).
    gen_config = generate_kwargs.pop("generation_config", None)
    if gen_config is not None:
        gen_config = copy.deepcopy(gen_config)

    def setting(name: str):
        return _generation_setting(name, generate_kwargs, gen_config, model)

    ours: dict = {}
    if generate_kwargs.get("pad_token_id") is None and getattr(gen_config, "pad_token_id", None) is None:
        ours["pad_token_id"] = tokenizer.pad_token_id
    if suppress_context_tokens:
        # BOS is never a target in training; but where BOS == EOS (GPT-2 family) the id is also the end of text,
        # which must stay generable.
        blocked = [tokenizer.bos_token_id] if tokenizer.bos_token_id != tokenizer.eos_token_id else []
        if layout == "context":
            blocked += [tokenizer.convert_tokens_to_ids(CONTEXT_BEGIN), tokenizer.convert_tokens_to_ids(CONTEXT_END)]
        user = list(setting("suppress_tokens") or [])
        generate_kwargs.pop("suppress_tokens", None)
        ours["suppress_tokens"] = sorted(set(user) | {b for b in blocked if b is not None})
    extra = {}
    if guidance_scale != 1:
        # transformers' guidance processor keeps the unconditional branch (its ids and cache) in batch order and
        # appends each row's last token: it does not follow beam reordering, and assisted decoding feeds it draft
        # tokens that may be rejected. Its unconditional context would then no longer be the row's own continuation.
        beams = setting("num_beams") or 1
        if not is_int(beams):  # else a raw TypeError from the comparison below ('>' between str and int)
            raise ValueError(f"num_beams must be a positive int, got {beams!r}.")
        if beams > 1:
            raise ValueError(
                "guidance_scale != 1 does not work with num_beams > 1: transformers' guidance processor does not "
                "reorder its unconditional branch with the beams. Use greedy or sampled decoding (num_beams=1)."
            )
        assisted = [
            k
            for k in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
            if setting(k) is not None
        ]
        if assisted or setting("use_mtp") is True:
            raise ValueError(
                f"guidance_scale != 1 does not work with assisted decoding ({', '.join(assisted) or 'use_mtp'}): "
                "transformers' guidance processor would take draft tokens into its unconditional context. Drop it."
            )
        # generate() expands input_ids for several return sequences, but not the negative prompt.
        expand = setting("num_return_sequences") or 1
        if not is_int(expand) or expand < 1:  # else a raw torch error from repeat_interleave below
            raise ValueError(f"num_return_sequences must be a positive int, got {expand!r}.")
        extra = {
            "negative_prompt_ids": inputs["negative_prompt_ids"].repeat_interleave(expand, dim=0),
            "negative_prompt_attention_mask": inputs["negative_prompt_attention_mask"].repeat_interleave(
                expand, dim=0
            ),
        }
        ours["guidance_scale"] = float(guidance_scale)
    if guidance_scale == 1:
        # plain conditional generation, whatever a passed config or the model's own (generation_config.json) says:
        # 1 (transformers adds no guidance processor for it), not None, which generate() fills from the model's own
        ours["guidance_scale"] = 1.0
    if gen_config is not None:
        for key, value in ours.items():
            setattr(gen_config, key, value)
        extra["generation_config"] = gen_config
    else:
        generate_kwargs.update(ours)
    with torch.no_grad():
        out = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra, **generate_kwargs
        )
    if not return_text:
        return out
    sequences = out.sequences if hasattr(out, "sequences") else out
    prompt_len = inputs["input_ids"].shape[1]
    return tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
