"""Collator for metadata-conditioned language modelling: context prefixes kept out of the loss, dropout, packing."""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..utils.checks import is_bool, is_int, is_real
from .encoding import LAYOUTS, EncodedDocument, MetadataEncoder, check_model_embeds, check_tokenizer
from .templates import InvalidMetadataError, MetadataTemplate

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
#: Invalid metadata values logged one by one; later ones are only counted.
MAX_INVALID_WARNINGS = 10
#: Metadata whose prefix leaves no room for the document in a row is re-encoded from this many first characters, as
#: the reference pipeline does.
OVERLONG_METADATA_CHARS = 50


def check_dropout(value, name: str = "metadata_dropout") -> float:
    """`value` as a float if it is a real number in [0, 1] (numpy scalars too); else a `ValueError` naming `name`
    (NaN, bools and strings included)."""
    if not is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_seed(value, name: str = "seed") -> int:
    """`value` as an int if it is an integer (numpy's too); else a `ValueError` naming `name`. The seed is hashed as
    text, so 1.0 or True would silently be other seeds than 1."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}.")
    return int(value)


def keeps_metadata(text: str, metadata: str, seed: int, metadata_dropout: float) -> bool:
    """Whether a document keeps its metadata: a fixed per-document draw (hash of seed, metadata and text).

    As in the paper's pipeline, which draws once per document when tokenizing, a document is dropped in every epoch
    or in none; the draw needs no RNG state, so resumed and multi-worker runs see the same documents dropped.
    `seed` must be an int and `metadata_dropout` a number in [0, 1] (`ValueError` otherwise, as in
    `MetadataCollator`).
    """
    seed = check_seed(seed)
    metadata_dropout = check_dropout(metadata_dropout)
    if metadata_dropout <= 0.0:
        return True
    if metadata_dropout >= 1.0:
        return False
    digest = hashlib.blake2b(f"{seed}\x00{metadata}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=8)
    u = struct.unpack("<Q", digest.digest())[0] / 2.0**64
    return u >= metadata_dropout


@dataclass
class MetadataCollator:
    """Tokenize raw documents with a metadata context and build causal-LM batches whose loss skips BOS and context.

    Each example is a dict with the document text and the columns the template reads. The collator returns
    `input_ids`, `attention_mask` and `labels` (`-100` on BOS, the context and padding), plus `position_ids` when
    packing or padding on the left (see `return_position_ids`). It works with `Trainer` (set
    `remove_unused_columns=False` so metadata columns reach it) and with TRL's `SFTTrainer`
    (`dataset_kwargs={"skip_prepare_dataset": True}`).

    Two batch shapes:
    * padding (`block_size=None`): one row per document, padded on `padding_side`, documents cut to `max_length`;
    * packing (`block_size=N`): the batch's documents are concatenated into rows of exactly N tokens, each
      document with its own context; a document that continues into the next row gets its context again at the
      start of that row (`repeat_context=True`; in the `"context"` layout without BOS, as the reference pipeline's
      `--add-metadata-per-sequence` repeats it). By default each document attends only to itself
      (`document_attention`). The last row is padded, so no document token is lost.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): With `bos_token` and `pad_token` (and the context tokens for the
            `"context"` layout, see `add_context_tokens`).
        template (`MetadataTemplate`): Builds each example's metadata string.
        text_column (`str`, *optional*, defaults to `"text"`): Key of the document text: a `str` or `None` (read as
            `""`) per example; anything else (a list of paragraphs, bytes) raises a `TypeError` naming it.
        layout (`str`, *optional*, defaults to `"context"`): `"context"` (`<|context_begin|>..<|context_end|>`) or
            `"meco"` (`"URL: {metadata}\\n\\n"`; MeCo's host with `metadata_template("url_host")`).
        metadata_dropout (`float`, *optional*, defaults to 0.1): A real number in [0, 1] (numpy scalars too): the
            share of documents trained without metadata (the
            empty context pair in the `"context"` layout, plain text in `"meco"`), which teaches the unconditional
            model used by classifier-free guidance.
        seed (`int`, *optional*, defaults to 42): Seed of the per-document dropout draw.
        block_size (`int`, *optional*): Pack into rows of this many tokens; `None` pads one document per row.
        max_length (`int`, *optional*): In padding mode, cut each sequence (prefix included) to this length.
        max_document_tokens (`int`, *optional*): In padding mode, cut each document (its tokens after the prefix, EOS
            included) to this many tokens before `max_length` applies: collators whose prefixes differ in length
            (with and without metadata, the plain-text baseline) then score the same document tokens, where
            `max_length` alone would leave a longer prefix fewer of them.
        padding_side (`str`, *optional*): `"left"` or `"right"`; default: the tokenizer's.
        pad_to_multiple_of (`int`, *optional*): In padding mode, pad the length to a multiple of this.
        repeat_context (`bool`, *optional*, defaults to `True`): In packing mode, repeat the context on rows a
            document continues into, masked from the loss: in the `"context"` layout the context block without BOS
            (`<|context_begin|>{metadata}<|context_end|>`, the empty pair for a dropped document), in the `"meco"`
            layout the whole prefix (`[BOS] URL: {metadata}\\n\\n`, `[BOS]` for a plain document).
        return_position_ids (`bool`, *optional*): Also return `position_ids` (default: `True` when packing, required
            with `document_attention`, and when padding on the left, so that models with absolute positions (GPT-2)
            see each left-padded document at positions `0..n-1`, as alone; `False` for a model whose `forward` takes
            no `position_ids`).
        add_eos (`bool`, *optional*, defaults to `True`): End each document with EOS (loss-bearing). With `False`, a
            document with no token (an empty or `None` text) is left out of its batch (counted in `empty_documents`,
            warned once): it would be a prefix with nothing to train on. A batch of only such documents keeps them,
            with every label -100 (`Trainer` weighs it 0; a bare `model(**batch)` loss is NaN there).
        max_metadata_tokens (`int`, *optional*): Keep at most this many metadata tokens.
        document_attention (`bool`, *optional*): In packing mode, keep each document's tokens from attending to the
            other documents of its row (and their contexts), as MeCo trains. Default: `True` when packing. The batch
            then carries `position_ids` that restart at every document, `use_cache=False` and no `attention_mask`:
            transformers (`masking_utils.find_packed_sequence_indices`) turns restarting positions into a
            block-diagonal causal mask for eager, SDPA, flex and flash attention, the same convention as
            `DataCollatorWithFlattening`. `False` packs with one causal mask over the whole row (documents see the
            earlier documents of their row); positions then run `0..N-1` through the row, consistent with that mask.
            A model whose mask ignores the positions (OPT, Bloom, MPT, BioGPT in transformers 5) needs `False`:
            `check_model` (run by `MetadataTrainer` and `MetadataCooldownCallback` when training begins) refuses it.
        conditioning (`bool`, *optional*, defaults to `True`): When `False` every document gets the unconditional
            form. `MetadataCooldownCallback` turns it off for the final steps.
    """

    tokenizer: Any
    template: MetadataTemplate
    text_column: str = "text"
    layout: str = "context"
    metadata_dropout: float = 0.1
    seed: int = 42
    block_size: int | None = None
    max_length: int | None = None
    max_document_tokens: int | None = None
    padding_side: str | None = None
    pad_to_multiple_of: int | None = None
    repeat_context: bool = True
    return_position_ids: bool | None = None
    add_eos: bool = True
    max_metadata_tokens: int | None = None
    document_attention: bool | None = None
    conditioning: bool = True
    #: Batches collated so far and the batch index from which conditioning is off (set by the cooldown callback).
    batches_seen: int = field(default=0, repr=False)
    cooldown_start_batch: int | None = field(default=None, repr=False)
    #: Documents whose metadata value was unusable (unparseable URL, infinite/non-numeric score) and that were trained
    #: without metadata instead, in every collation (training and evaluation batches, each epoch again). Counted per
    #: process (each DataLoader worker counts its own). The logged `metadata_invalid` counts training batches only.
    invalid_metadata: int = field(default=0, repr=False)
    #: When a dict (`MetadataCooldownCallback` sets one), each batch's number of invalid documents, keyed by the batch
    #: index (`batches_seen` when the batch was built); only batches with at least one are entered. `None`: not kept.
    invalid_by_batch: dict[int, int] | None = field(default=None, repr=False, compare=False)
    #: Documents whose metadata prefix filled a whole row (`block_size` / `max_length`) and was re-encoded from its
    #: first `OVERLONG_METADATA_CHARS` characters. Counted per process.
    overlong_metadata: int = field(default=0, repr=False)
    #: Documents left out of their batch because they have no token to train on (an empty or `None` text with
    #: `add_eos=False`). Counted per process.
    empty_documents: int = field(default=0, repr=False)
    #: Inside `evaluating(...)`: whether evaluation batches are built with metadata (`None`: training batches).
    _eval_conditioning: bool | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.template, MetadataTemplate):
            raise TypeError(
                f"template must be a MetadataTemplate (see metadata_template(...)), got {type(self.template).__name__}."
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}.")
        self.metadata_dropout = check_dropout(self.metadata_dropout)  # numpy scalars too, stored as float (JSON)
        for name in ("block_size", "max_length", "max_document_tokens", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
        for name in ("repeat_context", "add_eos", "conditioning"):
            if not is_bool(getattr(self, name)):  # a string such as "false" would be truthy and silently mean True
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        for name in ("return_position_ids", "document_attention"):
            value = getattr(self, name)
            if value is not None and not is_bool(value):
                raise TypeError(f"{name} must be True, False or None (the default for the batch shape), got {value!r}.")
        self.seed = check_seed(self.seed)  # hashed as text: 1.5 and True would silently be other seeds than 1
        if self.block_size is not None and self.max_length is not None:
            raise ValueError("pass block_size (packing) or max_length (padding), not both.")
        if self.block_size is not None and self.max_document_tokens is not None:
            raise ValueError("max_document_tokens applies to padding mode only (packing loses no document token).")
        if self.block_size is not None and self.pad_to_multiple_of is not None:
            raise ValueError(
                "pad_to_multiple_of applies to padding mode only (packed rows are exactly block_size tokens); drop it "
                "or pick a block_size that is such a multiple."
            )
        if self.document_attention and self.block_size is None:
            raise ValueError("document_attention=True needs packing (block_size); padded rows hold one document each.")
        if self.document_attention is None:
            self.document_attention = self.block_size is not None
        if self.document_attention and self.return_position_ids is False:
            raise ValueError(
                "document_attention=True separates packed documents through their restarting position_ids; leave "
                "return_position_ids unset (or True), or pass document_attention=False for plain packing."
            )
        check_tokenizer(self.tokenizer, "MetadataCollator")  # after the checks of the other arguments' values
        side = self.padding_side or getattr(self.tokenizer, "padding_side", "right")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        self._side = side
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad_token; set tokenizer.pad_token = tokenizer.eos_token.")
        self._encoder = MetadataEncoder(
            self.tokenizer, self.layout, add_eos=self.add_eos, max_metadata_tokens=self.max_metadata_tokens
        )

    def check_model(self, model) -> None:
        """Raise a `ValueError` if `model`'s input embeddings have no row for a token this collator puts into every
        batch (BOS, the context markers of the `"context"` layout, EOS with `add_eos`, the pad), naming the fix
        `add_context_tokens(tokenizer, model)`; a training forward would otherwise fail with a raw `IndexError`.
        With packing and `document_attention` it also raises a `ValueError` for a model that does not keep packed
        documents apart (OPT, Bloom, MPT, BioGPT: see `check_document_attention`; two small forward passes, no
        gradient), which would otherwise train with every document attending to its predecessors.
        `MetadataCooldownCallback` and `MetadataTrainer` call it when training begins."""
        ids = [self.tokenizer.bos_token_id, self.tokenizer.pad_token_id]
        if self.add_eos:
            ids.append(self.tokenizer.eos_token_id)
        if self.layout == "context":
            ids += [self._encoder.context_begin_id, self._encoder.context_end_id]
        check_model_embeds(model, self.tokenizer, ids, "MetadataCollator's batches hold")
        if self.block_size is not None and self.document_attention:
            check_document_attention(model)

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def conditioning_active(self) -> bool:
        """Whether the next batch is built with metadata (False once the cooldown has started; inside
        `evaluating(conditioning)`, that `conditioning`)."""
        if not self.conditioning:
            return False
        if self._eval_conditioning is not None:
            return self._eval_conditioning
        return self.cooldown_start_batch is None or self.batches_seen < self.cooldown_start_batch

    @contextmanager
    def evaluating(self, conditioning: bool) -> Iterator[MetadataCollator]:
        """Collate evaluation batches: inside the block batches neither read nor advance the training batch counter
        (`batches_seen`) that places the cooldown switch, nor count as training batches for `metadata_invalid`.

        Args:
            conditioning (`bool`): Whether the evaluation batches are built with metadata: the phase the model is in,
                `MetadataCooldownCallback.conditioning_at(state.global_step)` (`MetadataTrainer.evaluate` and
                `predict` pass it). With `conditioning=False` on the collator there is never metadata.

        The training counter cannot tell an evaluation batch from a training batch by itself: it counts the batch
        the data loader prepared ahead for the next step, so evaluation batches built from it would take the
        conditioning of later steps (and, across the switch, part of an evaluation would lose its metadata).
        """
        if not is_bool(conditioning):
            raise TypeError(f"conditioning must be True or False, got {conditioning!r}.")
        previous = self._eval_conditioning
        self._eval_conditioning = bool(conditioning)
        try:
            yield self
        finally:
            self._eval_conditioning = previous

    def metadata_for(self, examples: list[dict], active: bool | None = None) -> list[str | None]:
        """The metadata string of each example: `None` where the template gives none or `metadata_dropout` drops it,
        and for every example when conditioning is off (`active`, defaults to `conditioning_active`: `False` with
        `conditioning=False` or once the cooldown has started). Does not advance the batch counter."""
        if active is None:
            active = self.conditioning_active
        out: list[str | None] = []
        for example in examples:
            text = self._text(example)
            try:
                meta = self.template(example)
            except InvalidMetadataError as err:
                meta = None
                self._invalid(err)
            if not active or not meta or not keeps_metadata(text, meta, self.seed, self.metadata_dropout):
                out.append(None)
            else:
                out.append(meta)
        return out

    def _text(self, example: dict) -> str:
        """The document text of `example` (`None` read as `""`); a `ValueError` / `TypeError` naming `text_column`
        when the column is absent or holds anything but a str or `None`."""
        if self.text_column not in example:
            raise ValueError(
                f"text_column={self.text_column!r} is missing from the example (keys: {sorted(example)}); pass "
                "the column holding the document text, and with a Trainer set remove_unused_columns=False."
            )
        text = example[self.text_column]
        if text is None:
            return ""
        if not isinstance(text, str):
            # a list of str would be read by the tokenizer as one pre-split text, its items run together
            raise TypeError(
                f"text_column={self.text_column!r} must hold a str (or None) per example, got a "
                f"{type(text).__name__}: {text!r:.80}; join a list of paragraphs into one str first (e.g. "
                f"dataset.map(lambda row: {{{self.text_column!r}: '\\n'.join(row[{self.text_column!r}])}})) or pass "
                "the column holding the document text."
            )
        return text

    def _invalid(self, err: InvalidMetadataError) -> None:
        self.invalid_metadata += 1
        if self.invalid_metadata <= MAX_INVALID_WARNINGS:
            more = (
                "; further invalid values are counted in MetadataCollator.invalid_metadata without a warning"
                if self.invalid_metadata == MAX_INVALID_WARNINGS
                else ""
            )
            logger.warning(
                "invalid metadata (%s): the document is trained without metadata (%d so far%s).",
                err,
                self.invalid_metadata,
                more,
            )

    def encode(self, examples: list[dict]) -> list[EncodedDocument]:
        """Encode the examples (advances the batch counter used by the cooldown, except inside `evaluating`); with
        `add_eos=False` documents with no token are left out."""
        if self._eval_conditioning is not None:  # an evaluation batch: the training counter is neither read nor moved
            return self._encode(examples, self.conditioning_active, None)
        if self.cooldown_start_batch is not None:
            from torch.utils.data import get_worker_info

            if get_worker_info() is not None:
                raise RuntimeError(
                    "MetadataCollator is applying a cooldown inside a DataLoader worker process, where the batch "
                    "counter is a private copy and the switch would land at the wrong step (or never); collate in "
                    "the main process (dataloader_num_workers=0)."
                )
        active = self.conditioning_active
        index = self.batches_seen
        self.batches_seen += 1
        return self._encode(examples, active, index)

    def _encode(self, examples: list[dict], active: bool, index: int | None) -> list[EncodedDocument]:
        """Encode a batch built with metadata or not (`active`); `index`: its training batch index (`None` for an
        evaluation batch, whose invalid metadata is not entered in `invalid_by_batch`). Documents with no token to
        train on are left out (`_drop_empty`)."""
        texts = [self._text(e) for e in examples]
        all_empty = False  # a batch of only empty texts is kept whole (counted once, here)
        if not self.add_eos:  # with EOS every document has a token to train on
            all_empty = not any(texts)
            kept = self._drop_empty([i for i, t in enumerate(texts) if t], len(texts))
            examples, texts = [examples[i] for i in kept], [texts[i] for i in kept]
        invalid_before = self.invalid_metadata
        metadata = self.metadata_for(examples, active)
        if index is not None and self.invalid_by_batch is not None and self.invalid_metadata > invalid_before:
            self.invalid_by_batch[index] = self.invalid_metadata - invalid_before
        docs = self._encoder.encode_batch(texts, metadata)
        if not all_empty and any(len(d.input_ids) == d.prefix_length for d in docs):  # text read as no token at all
            kept = self._drop_empty([i for i, d in enumerate(docs) if len(d.input_ids) > d.prefix_length], len(docs))
            docs, texts, metadata = [docs[i] for i in kept], [texts[i] for i in kept], [metadata[i] for i in kept]
        limit = self.block_size if self.block_size is not None else self.max_length
        overlong = [] if limit is None else [i for i, d in enumerate(docs) if d.prefix_length >= limit and metadata[i]]
        if overlong:
            # The reference pipeline's fallback: re-encode over-long metadata from its first 50 characters. A prefix
            # still too long raises in _pad / _pack, naming max_metadata_tokens.
            longest = max(docs[i].prefix_length for i in overlong)
            short = [metadata[i][:OVERLONG_METADATA_CHARS] for i in overlong]
            for i, doc in zip(overlong, self._encoder.encode_batch([texts[i] for i in overlong], short)):
                docs[i] = doc
            if self.overlong_metadata == 0:
                logger.warning(
                    "a %d-token metadata prefix leaves no room for the document in a %d-token row: such metadata is "
                    "re-encoded from its first %d characters (counted in MetadataCollator.overlong_metadata; set "
                    "max_metadata_tokens to cut metadata by tokens instead).",
                    longest, limit, OVERLONG_METADATA_CHARS,
                )  # fmt: skip
            self.overlong_metadata += len(overlong)
        return docs

    def _drop_empty(self, kept: list[int], total: int) -> list[int]:
        """`kept` (the indices of a batch's documents that have tokens to train on); count and warn (once) about the
        others. A batch with no such document keeps them all (a batch needs a row): every label is then -100, which
        transformers' `Trainer` weighs 0 (its loss is summed over the step's label tokens, `num_items_in_batch`)."""
        if len(kept) == total:
            return kept
        if self.empty_documents == 0:
            logger.warning(
                "a document with no tokens (text_column=%r holds '' or None) and add_eos=False would be a metadata "
                "prefix with nothing to train on: such documents are left out of their batch, and a batch of only "
                "such documents keeps them with every label -100 (no token trained; transformers' Trainer weighs it "
                "0, but a bare model(**batch) loss is NaN) (counted in MetadataCollator.empty_documents; filter them "
                "from the dataset, or pass add_eos=True).",
                self.text_column,
            )
        self.empty_documents += total - len(kept)
        return kept if kept else list(range(total))

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        if isinstance(examples, Mapping):
            # a `datasets` slice (`ds[:4]`) is a dict of column lists, and one row is a dict too: both would be read
            # as rows by position (a raw KeyError: 0). transformers' LM collators (DataCollatorForLanguageModeling,
            # default_data_collator) take a list of rows as well; only DataCollatorWithPadding, through
            # tokenizer.pad, reads a column dict, and a Mapping alone cannot tell columns from one row.
            raise TypeError(
                f"examples is a {type(examples).__name__} (keys {list(examples)[:5]}), such as a datasets slice "
                "ds[:n] (a dict of columns) or one row; MetadataCollator collates a list of rows: pass "
                "[ds[i] for i in range(n)] or ds.select(range(n)) (one row: [row])."
            )
        if not examples:
            raise ValueError("cannot collate an empty list of examples.")
        if not isinstance(examples[0], dict):
            raise TypeError(
                f"examples must be dicts with text and metadata columns, got {type(examples[0]).__name__}."
            )
        docs = self.encode(examples)
        rows = self._pack(docs) if self.block_size is not None else self._pad(docs)
        batch = {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}
        if self.document_attention:
            # Without an attention mask (and without a cache) transformers derives per-document causal masks from
            # the restarting position_ids.
            batch.pop("attention_mask")
            batch["use_cache"] = False
            return batch
        if self.return_position_ids is not None:
            want_positions = self.return_position_ids
        else:
            # Packed rows need them; left padding too: without them an absolute-position model (GPT-2) counts
            # positions from the first (pad) column, so a document's loss would depend on its batch's padding.
            want_positions = self.block_size is not None or self._side == "left"
        if not want_positions:
            batch.pop("position_ids")
        return batch

    # ----------------------------------------------------------------------------------------------------------------
    def _pad(self, docs: list[EncodedDocument]) -> dict:
        pad = self.tokenizer.pad_token_id
        seqs = []
        for doc in docs:
            ids = doc.input_ids
            if self.max_document_tokens is not None:
                ids = ids[: doc.prefix_length + self.max_document_tokens]
            if self.max_length is not None:
                if doc.prefix_length >= self.max_length:
                    raise ValueError(
                        f"max_length={self.max_length} leaves no room for the document after a {doc.prefix_length}-"
                        "token prefix; raise max_length or set max_metadata_tokens."
                    )
                ids = ids[: self.max_length]
            labels = [IGNORE_INDEX] * doc.prefix_length + ids[doc.prefix_length :]
            seqs.append((ids, labels))
        length = max(len(ids) for ids, _ in seqs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
        for ids, labels in seqs:
            n = length - len(ids)
            positions = list(range(len(ids)))
            if self._side == "right":
                out["input_ids"].append(ids + [pad] * n)
                out["attention_mask"].append([1] * len(ids) + [0] * n)
                out["labels"].append(labels + [IGNORE_INDEX] * n)
                out["position_ids"].append(positions + [0] * n)
            else:
                out["input_ids"].append([pad] * n + ids)
                out["attention_mask"].append([0] * n + [1] * len(ids))
                out["labels"].append([IGNORE_INDEX] * n + labels)
                out["position_ids"].append([0] * n + positions)
        return out

    def _pack(self, docs: list[EncodedDocument]) -> dict:
        size = self.block_size
        pad = self.tokenizer.pad_token_id
        out = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_pos: list[int] = []

        def flush():
            n = size - len(row_ids)
            out["input_ids"].append(row_ids + [pad] * n)
            out["attention_mask"].append([1] * len(row_ids) + [0] * n)
            out["labels"].append(row_labels + [IGNORE_INDEX] * n)
            out["position_ids"].append(row_pos + [0] * n)
            row_ids.clear()
            row_labels.clear()
            row_pos.clear()

        for doc in docs:
            prefix = doc.input_ids[: doc.prefix_length]
            body = doc.input_ids[doc.prefix_length :]
            if len(prefix) >= size:
                raise ValueError(
                    f"block_size={size} leaves no room for the document after a {len(prefix)}-token prefix; raise "
                    "block_size or set max_metadata_tokens."
                )
            # The prefix a continued row repeats. "context": the context block without BOS, as the reference
            # pipeline's --add-metadata-per-sequence repeats [CB] metadata [CE], so a continuation is not taken for a
            # document's start. "meco" (no such reference) keeps repeating its whole prefix, BOS included.
            if not self.repeat_context:
                repeated = []
            elif self.layout == "context":
                repeated = prefix[1:]
            else:
                repeated = prefix
            start, first = 0, True
            while first or start < len(body):
                header = prefix if first else repeated
                space = size - len(row_ids)
                if space < len(header) + 1:  # the prefix and one document token must share a row
                    flush()
                    continue
                take = min(space - len(header), len(body) - start)
                chunk = body[start : start + take]
                row_ids.extend(header)
                row_ids.extend(chunk)
                row_labels.extend([IGNORE_INDEX] * len(header))
                row_labels.extend(chunk)
                if self.document_attention:  # positions restart per document: transformers masks per document
                    row_pos.extend(range(len(header) + len(chunk)))
                else:  # one causal mask over the row: positions run through it
                    row_pos.extend(range(len(row_pos), len(row_pos) + len(header) + len(chunk)))
                start += take
                first = False
                if len(row_ids) == size:
                    flush()
        if row_ids:
            flush()
        return out


def check_document_attention(model) -> None:
    """Raise a `ValueError` if `model` lets a packed document attend to the documents before it in its row.

    `document_attention` batches carry restarting `position_ids` and no attention mask; transformers turns them
    into per-document masks only in models that hand their `position_ids` to `masking_utils.create_causal_mask`.
    Others (OPT, Bloom, MPT, BioGPT, XGLM in transformers 5) build one causal mask over the whole row: every
    document would attend to its predecessors while its positions restart, silently. The probe: two rows that
    differ only in a first document, followed by the same second document; the second document's logits must
    not change (compared with the change the same rows cause under one whole-row mask). Skipped for a model that
    cannot run the probe (a forward that raises: no weights, no `position_ids` argument, ...) or that no context
    moves."""
    import torch

    try:
        param = next(model.parameters())
        rows = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError, StopIteration, TypeError):
        return
    if param.device.type == "meta":
        return
    k = 16  # tokens per probe document: rows of 32 tokens (FP8 matmuls want multiples of 16)
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(rows, (2, k), generator=generator)
    second = torch.randint(rows, (1, k), generator=generator).expand(2, k)
    ids = torch.cat([first, second], dim=1).to(param.device)
    restart = torch.arange(k).repeat(2).expand(2, 2 * k).to(param.device)
    through = torch.arange(2 * k).expand(2, 2 * k).to(param.device)
    modes = [(module, module.training) for module in model.modules()]  # restored module by module below
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=ids, position_ids=restart, use_cache=False).logits[:, k:].float()
            whole_row = model(
                input_ids=ids, position_ids=through, attention_mask=torch.ones_like(ids), use_cache=False
            ).logits[:, k:].float()
    except Exception as err:  # noqa: BLE001 - a model the probe cannot run is trained (and fails) as before
        logger.debug("document_attention probe skipped: %s", err)
        return
    finally:
        for module, training in modes:
            module.training = training
    leak = float((packed[0] - packed[1]).abs().max())
    reference = float((whole_row[0] - whole_row[1]).abs().max())
    recurrent = _recurrent_layer_types(model)
    # A recurrent layer's carried state is small in a randomly initialised model (Jamba: 0.0035 against 0.53, Falcon-H1
    # 0.00089 against 0.60 with the whole-row mask), but nothing resets it at a document start: any change is a leak.
    tolerance = 1e-4 if recurrent else 0.1
    if not (math.isfinite(leak) and math.isfinite(reference)) or reference == 0.0 or leak <= tolerance * reference:
        return
    measured = (
        f"{type(model).__name__} does not keep packed documents apart: with document_attention=True (the default "
        "when packing) a document's logits change with the document before it in its row (by "
        f"{leak:.3g}, where one causal mask over the whole row changes them by {reference:.3g})."
    )
    if recurrent:
        cause = (
            f" Its layers of type {recurrent} (state-space / recurrent / linear-attention / short-convolution mixers "
            "such as Mamba) carry their state from one document to the next along the row: restarting position_ids "
            "reset the attention masks, not that state, so every document would see its predecessors through it. Pass "
            "block_size=None (one padded document per row) to keep documents apart, or "
            "MetadataCollator(document_attention=False) "
            "(plain packing: documents see their predecessors, positions run through the row; the recipe, which "
            "always packs, takes --document_attention false)."
        )
    else:
        cause = (
            " transformers derives per-document masks from restarting position_ids only in models that pass them to "
            "masking_utils.create_causal_mask (OPT, Bloom, MPT, BioGPT and XGLM do not), so every document would "
            "attend to its predecessors while its positions restart. Pass MetadataCollator(document_attention=False) "
            "(plain packing: one mask over the row, positions through it; the recipe's --document_attention false) "
            "or block_size=None (one padded document per row), or use a model whose attention follows position_ids "
            "(Llama, Mistral, Qwen2, GPT-2, FOG, ...)."
        )
    raise ValueError(measured + cause)


#: `layer_types` / `layers_block_type` entries of transformers configs for layers that carry a state along the sequence
#: (Mamba / Mamba2 mixers, linear attention, Falcon-H1's parallel attention + Mamba "hybrid" layers, ZAYA1's
#: "hybrid_sliding", LFM2's short causal convolutions "conv", whose window reaches into the previous document).
_RECURRENT_LAYER_TYPES = frozenset(
    {"linear_attention", "hybrid", "hybrid_sliding", "conv", "mamba", "mamba2", "recurrent", "rwkv"}
)


def _recurrent_layer_types(model) -> list[str]:
    """The layer types of `model`'s (text) config that carry a state along the sequence, sorted; `[]` for none."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    found = set()
    for attr in ("layer_types", "layers_block_type"):
        value = getattr(config, attr, None)
        if isinstance(value, list | tuple):
            found |= {t for t in value if isinstance(t, str) and t in _RECURRENT_LAYER_TYPES}
    return sorted(found)
