"""Token layout of a metadata-conditioned document and the special context tokens."""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass

from ..utils.checks import is_bool, is_int

logger = logging.getLogger(__name__)

CONTEXT_BEGIN = "<|context_begin|>"
CONTEXT_END = "<|context_end|>"
LAYOUTS = ("context", "meco")
#: How many tokens a `max_metadata_tokens` cut steps back at most to find a prefix that re-encodes to the same ids.
ROUND_TRIP_STEPS = 32


def add_context_tokens(tokenizer, model=None) -> tuple[int, int]:
    """Add `<|context_begin|>` and `<|context_end|>` as special tokens (and resize `model`'s embeddings).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): Tokenizer to extend (in place; no-op if the tokens exist).
        model (`PreTrainedModel`, *optional*): Model whose input/output embeddings are resized to the tokenizer.

    Returns:
        `(context_begin_id, context_end_id)`.
    """
    if not (hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "add_special_tokens")):
        raise TypeError(
            f"add_context_tokens needs a tokenizer object, got {type(tokenizer).__name__} {tokenizer!r:.80}; load it "
            "first, e.g. add_context_tokens(AutoTokenizer.from_pretrained(name), model)."
        )
    if model is not None and not hasattr(model, "get_input_embeddings"):
        raise TypeError(
            f"add_context_tokens: model must be a model object with input embeddings (a PreTrainedModel) or None, got "
            f"{type(model).__name__} {model!r:.80}."
        )
    vocab = tokenizer.get_vocab()
    missing = [t for t in (CONTEXT_BEGIN, CONTEXT_END) if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(CONTEXT_BEGIN), tokenizer.convert_tokens_to_ids(CONTEXT_END)


def check_tokenizer(tokenizer, owner: str) -> None:
    """A `TypeError` naming `tokenizer` and `owner` where `tokenizer` is not a tokenizer object (a name such as
    `"gpt2"`, `None`), which would otherwise fail later with a raw `AttributeError` (`'str' object has no attribute
    'pad_token_id'`)."""
    if not all(hasattr(tokenizer, name) for name in ("get_vocab", "convert_tokens_to_ids", "bos_token_id")):
        raise TypeError(
            f"{owner}: tokenizer must be a tokenizer object, got {type(tokenizer).__name__} {tokenizer!r:.80}; load it "
            "first, e.g. AutoTokenizer.from_pretrained(name), then add_context_tokens(tokenizer, model)."
        )


def _embedding_rows(model) -> int | None:
    """The number of rows of `model`'s input embeddings, `None` where it cannot be read."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    rows = getattr(embeddings, "num_embeddings", None)
    return rows if isinstance(rows, int) else None


def check_model_embeds(model, tokenizer, ids, what: str) -> None:
    """Raise a `ValueError` if `model`'s input embeddings have no row for one of the token `ids` (`None` entries are
    skipped), naming the tokens, `what` carries them and the fix: `add_context_tokens(tokenizer, model)`.

    A model left at its old size after `add_context_tokens(tokenizer)` (without `model`) would otherwise fail in the
    embedding lookup with a raw `IndexError: index out of range in self`. Nothing is checked for a model whose input
    embeddings cannot be read."""
    rows = _embedding_rows(model)
    if rows is None:
        return
    missing = sorted({int(i) for i in ids if i is not None and int(i) >= rows})
    if not missing:
        return
    tokens = tokenizer.convert_ids_to_tokens(missing[:4])
    shown = ", ".join(f"{t} ({i})" for t, i in zip(tokens, missing)) + (", ..." if len(missing) > 4 else "")
    raise ValueError(
        f"{what} token ids the model cannot embed: {shown}, but {type(model).__name__}'s input embeddings have "
        f"{rows} rows (ids 0..{rows - 1}). The tokenizer has {len(tokenizer)} tokens: call "
        "add_context_tokens(tokenizer, model), which adds the context tokens and resizes the model's embeddings to "
        "the tokenizer (add_context_tokens(tokenizer) alone leaves the model as it was), or use the model that was "
        "trained with this tokenizer."
    )


def _check_meco_prefix(meco_prefix) -> None:
    """Raise unless `meco_prefix` is a format string whose only field is one plain `{metadata}`."""
    example = "e.g. 'URL: {metadata}\\n\\n' (write a literal brace as '{{' or '}}')"
    if not isinstance(meco_prefix, str):
        raise TypeError(f"meco_prefix must be a str with one '{{metadata}}' field, {example}; got {meco_prefix!r}.")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(meco_prefix) if f is not None]
    except ValueError as err:  # a lone brace
        raise ValueError(f"meco_prefix={meco_prefix!r} is not a valid format string ({err}); {example}.") from None
    if fields != [("metadata", "", None)]:
        found = [
            "{" + f + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}" for f, spec, conv in fields
        ]
        raise ValueError(
            f"meco_prefix must have exactly one field, a plain '{{metadata}}' (no other field, conversion or format "
            f"spec), {example}; got {meco_prefix!r} with fields {found}."
        )


def _check_entries(name: str, values, allowed: str, fix: str) -> None:
    """Raise a `TypeError` naming `name[i]` for the first entry of `values` that is neither a str nor `None`."""
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name}[{i}] must be {allowed}, got {type(value).__name__} {value!r:.60}; {fix}.")


@dataclass
class EncodedDocument:
    """Token ids of one document with its prefix; `prefix_length` tokens (BOS + context) carry no loss."""

    input_ids: list[int]
    prefix_length: int


class MetadataEncoder:
    """Encode `(document, metadata)` pairs into token ids with the paper's or MeCo's layout.

    * `layout="context"` (URLs Help, Topics Guide): `[BOS] <|context_begin|> {metadata} <|context_end|> {document}
      [EOS]`; a dropped document keeps the empty pair `[BOS] <|context_begin|><|context_end|> {document} [EOS]`, which
      is also the unconditional prompt of guided generation.
    * `layout="meco"` (MeCo): `[BOS] URL: {host}\\n\\n {document} [EOS]` with plain-text markers; a dropped document is
      plain `[BOS] {document} [EOS]`.

    Metadata and document are tokenized separately, so the prefix boundary is exact. Both are tokenized with
    `split_special_tokens=True`: a literal `<|context_end|>` or EOS string inside a document or URL becomes ordinary
    text tokens, never the control token itself.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): Needs `bos_token`; the context layout needs `add_context_tokens` first.
        layout (`str`, *optional*, defaults to `"context"`): `"context"` or `"meco"`.
        meco_prefix (`str`, *optional*, defaults to `"URL: {metadata}\\n\\n"`): Prefix text of the MeCo layout.
        add_eos (`bool`, *optional*, defaults to `True`): Append EOS to each document (loss-bearing).
        max_metadata_tokens (`int`, *optional*): Keep at most this many metadata tokens. In the `"context"` layout
            the metadata between the markers is cut; in the `"meco"` layout the prefix text (`"URL: {metadata}\\n\\n"`)
            is cut to this many tokens while its closing separator (the text after `{metadata}`, `"\\n\\n"`) is
            always kept, so the document still starts after the separator. A cut never ends inside a character: where
            the tokenizer splits a multi-byte character over tokens (byte-level BPE), it keeps one to three tokens
            fewer, so the cut prefix decodes to whole characters. It also steps back out of a cut whose decoded text
            encodes otherwise (inside a run of spaces, which a byte-level BPE re-encodes as one longer token), so
            the cut prefix re-encodes to the same ids (as the recipe's lm-eval prompts do); see `_cut`.
    """

    def __init__(
        self,
        tokenizer,
        layout: str = "context",
        meco_prefix: str = "URL: {metadata}\n\n",
        add_eos: bool = True,
        max_metadata_tokens: int | None = None,
    ):
        check_tokenizer(tokenizer, "MetadataEncoder")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
        if tokenizer.bos_token_id is None:
            raise ValueError(
                "the tokenizer needs a bos_token (the layout starts with [BOS]); set tokenizer.bos_token."
            )
        if not is_bool(add_eos):  # a string such as "false" would be truthy and silently mean True
            raise TypeError(f"add_eos must be True or False, got {add_eos!r}.")
        if add_eos and tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True needs a tokenizer with an eos_token; set one or pass add_eos=False.")
        if layout == "context":
            vocab = tokenizer.get_vocab()
            if CONTEXT_BEGIN not in vocab or CONTEXT_END not in vocab:
                raise ValueError(
                    f"the tokenizer lacks {CONTEXT_BEGIN} / {CONTEXT_END}; call add_context_tokens(tokenizer, model) "
                    "first (it also resizes the model's embeddings)."
                )
            self.context_begin_id = vocab[CONTEXT_BEGIN]
            self.context_end_id = vocab[CONTEXT_END]
        _check_meco_prefix(meco_prefix)
        if max_metadata_tokens is not None and (not is_int(max_metadata_tokens) or max_metadata_tokens < 1):
            raise ValueError(f"max_metadata_tokens must be a positive int or None, got {max_metadata_tokens!r}.")
        self.tokenizer = tokenizer
        self.layout = layout
        self.meco_prefix = meco_prefix
        self.add_eos = add_eos
        self.max_metadata_tokens = max_metadata_tokens
        self._warned_round_trip = False
        self._check_no_control_tokens_from_text()
        # The meco prefix's closing separator ("\n\n"), kept whole when the prefix is cut.
        self._meco_head, tail = meco_prefix.format(metadata="\x00").split("\x00", 1)
        self._meco_tail_ids = self._tokens([tail])[0] if tail else []
        if layout == "meco" and max_metadata_tokens is not None and max_metadata_tokens <= len(self._meco_tail_ids):
            raise ValueError(
                f"max_metadata_tokens={max_metadata_tokens} leaves no room for the metadata before the meco prefix's "
                f"{len(self._meco_tail_ids)}-token closing separator {tail!r}; raise max_metadata_tokens."
            )

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        """Token ids of data text. Special-token strings in the text (a literal `<|context_end|>`, `<|endoftext|>`)
        are split into ordinary tokens (`split_special_tokens=True`): data never produces a control token."""
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _check_no_control_tokens_from_text(self) -> None:
        tok = self.tokenizer
        control = {i for i in tok.all_special_ids if i is not None}
        # The unknown token is no control token: an unknown character gives it in any document (a BPE without byte
        # fallback encodes the probe's "<" as <unk>). Its id stays one where another special token has it too
        # (GPT-2's "<|endoftext|>" is unk, BOS and EOS).
        if tok.unk_token_id is not None:
            roles = {getattr(tok, f"{role}_token_id", None) for role in ("bos", "eos", "pad", "sep", "cls", "mask")}
            roles |= {i for t, i in zip(tok.all_special_tokens, tok.all_special_ids) if t != tok.unk_token}
            if tok.unk_token_id not in roles:
                control.discard(tok.unk_token_id)
        probe = " ".join(t for t in self.tokenizer.all_special_tokens if t)
        if CONTEXT_BEGIN in self.tokenizer.get_vocab():
            probe += f" {CONTEXT_BEGIN} {CONTEXT_END}"
            control |= {
                self.tokenizer.convert_tokens_to_ids(CONTEXT_BEGIN),
                self.tokenizer.convert_tokens_to_ids(CONTEXT_END),
            }
        leaked = control.intersection(self._tokens([probe])[0])
        unknown = ""  # the probe's characters that the tokenizer encodes as <unk>, when <unk> is what leaked
        if leaked and leaked == {tok.unk_token_id}:
            chars = sorted(set(probe) - {" "})
            unknown = "".join(c for c, ids in zip(chars, self._tokens(chars), strict=True) if tok.unk_token_id in ids)
        if unknown:
            # unknown characters of the probe give <unk> (no byte fallback), and its id has another role
            roles = [r for r in ("bos", "eos", "pad", "sep", "cls", "mask") if getattr(tok, f"{r}_token_id", None)
                     == tok.unk_token_id]  # fmt: skip
            if roles:
                shared = f"is also its {'/'.join(roles)} token"
                fix = f"its own {'/'.join(roles)} token (not `tokenizer.{roles[0]}_token = tokenizer.unk_token`)"
            else:
                shared, fix = "another special token shares", "distinct ids for them"
            raise ValueError(
                f"{type(tok).__name__} encodes characters it does not know (here {unknown!r}, from special-token "
                f"strings, which a document may hold) as its unk token {tok.unk_token!r}, id {tok.unk_token_id}, "
                f"which {shared}: a document could produce that control token. Give the tokenizer {fix} or a "
                "vocabulary with byte fallback, which knows every character."
            )
        if leaked:
            raise ValueError(
                f"{type(self.tokenizer).__name__} turns special-token strings in text into control tokens "
                f"{sorted(leaked)} even with split_special_tokens=True, so a document could forge BOS/EOS or the "
                "context markers; use a tokenizer that supports split_special_tokens (any fast tokenizer does)."
            )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _cut(self, ids: list[int], limit: int, tail: list[int] | None = None) -> list[int]:
        """The first `limit` of `ids` (the tokens of a metadata text), fewer where the cut would end inside a character
        or would not re-encode to the same ids.

        A byte-level BPE can split one multi-byte UTF-8 character (`東`, `ü`) over several tokens; a cut between them
        would leave a partial character, which decodes to U+FFFD, so the decoded prefix (what an lm-eval prompt
        carries) would re-encode to other ids than the model was trained on. The cut steps back to the last whole
        character instead: the first `k <= limit` tokens whose decoded text is a prefix of the decoded whole and that
        do not end in a U+FFFD continued by one at the start of the rest (a character split by the cut; this also
        catches a split of a U+FFFD that `text` itself holds). It then steps back further (at most
        `ROUND_TRIP_STEPS` tokens) until the kept tokens, followed by `tail` (the meco prefix's closing separator),
        re-encode from their decoded text to the same ids: a cut inside a run of spaces (`"News,   Blog"`: the
        pre-tokenizer splits the run before its last space) decodes to text that encodes as one longer whitespace
        token. Where no such cut is found within those steps (a tokenizer whose decoding does not round-trip), the
        whole-character cut is kept, with a warning.
        """
        if len(ids) <= limit:
            return ids
        whole = self._decode(ids)
        tail = list(tail or [])

        def splits_a_character(k: int) -> bool:
            head = self._decode(ids[:k])
            if not whole.startswith(head):
                return True
            return head.endswith("\ufffd") and self._decode(ids[k:]).startswith("\ufffd")

        def round_trips(k: int) -> bool:
            kept = ids[:k] + tail
            return self._tokens([self._decode(kept)])[0] == kept

        k = limit
        while k > 0 and splits_a_character(k):
            k -= 1
        for j in range(k, max(k - ROUND_TRIP_STEPS, 1) - 1, -1):
            if round_trips(j) and (j == k or not splits_a_character(j)):
                return ids[:j]
        if k > 0 and not self._warned_round_trip:
            self._warned_round_trip = True
            logger.warning(
                "max_metadata_tokens=%d: no cut of the metadata %r within %d tokens re-encodes to the same ids "
                "(the tokenizer's decoding does not round-trip); the cut keeps %d whole-character tokens, and a "
                "prompt built from its decoded text (lm-eval) may get other ids than training.",
                limit, whole, ROUND_TRIP_STEPS, k,
            )  # fmt: skip
        return ids[:k]

    def prefix_ids(self, metadata: list[str | None]) -> list[list[int]]:
        """BOS + context tokens for each metadata string (`None` = dropped/unconditional)."""
        _check_entries("metadata", metadata, "a str or None (no metadata)", "build it with metadata_template(...)")
        bos = self.tokenizer.bos_token_id
        if self.layout == "context":
            present = [m for m in metadata if m]
            encoded = iter(self._tokens(present))
            out = []
            for m in metadata:
                meta = next(encoded) if m else []
                if self.max_metadata_tokens is not None:
                    meta = self._cut(meta, self.max_metadata_tokens)
                out.append([bos, self.context_begin_id, *meta, self.context_end_id])
            return out
        present = [m for m in metadata if m]
        encoded = iter(self._tokens([self.meco_prefix.format(metadata=m) for m in present]))
        limit = self.max_metadata_tokens
        out = []
        for m in metadata:
            meta = next(encoded) if m else []
            if limit is not None and len(meta) > limit:
                # Cut the prefix text before the separator, then close it: the document never runs on from the URL.
                head_text = self._meco_head + m
                head = self._tokens([head_text])[0]
                meta = self._cut(head, limit - len(self._meco_tail_ids), self._meco_tail_ids) + self._meco_tail_ids
            out.append([bos, *meta])
        return out

    def encode_batch(self, texts: list[str], metadata: list[str | None]) -> list[EncodedDocument]:
        """Encode documents with their metadata (`None` or `""` = no metadata)."""
        for name, value in (("texts", texts), ("metadata", metadata)):
            if isinstance(value, str):  # a str is a sequence: each character would become a document
                raise TypeError(f"{name} must be a list (one entry per document), got a str; wrap it: [{name}].")
        _check_entries("texts", texts, "a str (or None, an empty document)", "decode bytes first")
        _check_entries("metadata", metadata, "a str or None (no metadata)", "build it with metadata_template(...)")
        if len(texts) != len(metadata):
            raise ValueError(f"got {len(texts)} texts but {len(metadata)} metadata strings.")
        prefixes = self.prefix_ids(metadata)
        bodies = self._tokens([t or "" for t in texts])
        eos = [self.tokenizer.eos_token_id] if self.add_eos else []
        return [EncodedDocument(p + b + eos, len(p)) for p, b in zip(prefixes, bodies)]
