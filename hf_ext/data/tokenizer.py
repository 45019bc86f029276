"""Byte-level BPE tokenizer trained on the embedded corpus, cached, returned as `PreTrainedTokenizerFast`."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from ..utils.checks import is_bool
from ..utils.io import make_temp_dir
from .utils import cache_dir, writable_cache_subdir

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]


#: Bounds of `vocab_size` for the byte-level BPE tokenizer built here: the byte alphabet plus the special tokens, and
#: 2**20 (the BPE trainer reserves memory in proportion to the requested size, about 70 bytes a token, and aborts the
#: process when that fails: 1e9 asked for 70 GB; published vocabularies hold at most about 256k tokens).
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 2**20


def vocab_size_problem(vocab_size, name: str = "vocab_size") -> str | None:
    """Why `vocab_size` cannot be the size of the tokenizer `build_tokenizer` trains (a message naming `name`), or
    `None` when it can."""
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool):
        if MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            return None
    return (
        f"{name} must be an int in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (at least the byte alphabet plus special "
        f"tokens; at most 2**20: the BPE trainer reserves memory in proportion to it), got {vocab_size!r}."
    )


def _train_tokenizer(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return tk


def _check_texts(texts) -> list[str]:
    """`texts` as a list of documents, refused by name when it cannot be one."""
    if isinstance(texts, str | bytes):
        raise TypeError(
            f"texts must be a collection of documents (strings), got a single {type(texts).__name__} "
            f"({texts[:40]!r}); pass [text]."
        )
    try:
        docs = list(texts)
    except TypeError as err:
        raise TypeError(f"texts must be an iterable of strings, got {type(texts).__name__}.") from err
    if not docs:
        raise ValueError("texts is empty: there is nothing to train the tokenizer on; pass documents or texts=None.")
    bad = next((i for i, doc in enumerate(docs) if not isinstance(doc, str)), None)
    if bad is not None:
        raise TypeError(
            f"texts must hold only strings; texts[{bad}] is {docs[bad]!r:.40} of type {type(docs[bad]).__name__}: "
            "drop or convert those items."
        )
    return docs


def build_tokenizer(vocab_size: int = 4096, cache: bool = True, texts=None):
    """Train (or load from cache) a byte-level BPE tokenizer on the embedded corpus.

    The tokenizer adds no special tokens on its own: `bos_token` (`<|bos|>`), `eos_token` (`<|eos|>`) and
    `pad_token` (`<|pad|>`) are defined for collators and packing to insert explicitly (by id). Any UTF-8 text
    round-trips. Like every transformers tokenizer, it reads a spelled special token in a *prompt* as that token
    (`tok("<|bos|>x")` starts with the BOS id), so prompt strings built for evaluation encode as in training;
    *documents* are encoded with `split_special_tokens=True` where hf_ext tokenizes data (`pack_dataset`, the
    metadata encoder, compliance token counts), so a literal `"<|eos|>"` inside a document stays ordinary
    byte-level text there, never a false document boundary.

    Args:
        vocab_size (`int`, *optional*, defaults to 4096):
            Target vocabulary size including the 256 byte symbols and the 3 special tokens, at most 2**20.
        cache (`bool`, *optional*, defaults to `True`):
            Reuse a tokenizer trained earlier with the same settings on the same corpus (same corpus version and
            Python version; under `$HF_EXT_CACHE` or `~/.cache/hf_ext`). A bool: `"no"` is refused, not read as true.
        texts (`Iterable[str]`, *optional*):
            Train on these texts (one document each) instead of the embedded corpus (never cached). A bare string
            (which would train on each of its characters as a document, learning no merge), an empty collection and
            items that are not strings are refused.

    Returns:
        `transformers.PreTrainedTokenizerFast` that saves and reloads through `AutoTokenizer`.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    problem = vocab_size_problem(vocab_size)
    if problem:
        raise ValueError(problem)
    if not is_bool(cache):  # a string such as "no" would be truthy and silently mean True
        raise TypeError(f"cache must be True or False, got {cache!r}.")

    def wrap(tk):
        return PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=PAD_TOKEN,
            model_max_length=1 << 20,
        )

    if texts is not None:
        return wrap(_train_tokenizer(_check_texts(texts), vocab_size))

    from . import corpus

    # keyed like the corpus cache (corpus version and Python version: the corpus is the installation's stdlib text)
    key = hashlib.sha256(f"bpe-{vocab_size}-{corpus._corpus_cache_file().name}".encode()).hexdigest()[:12]
    target = cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{key}"
    if cache and (target / "tokenizer.json").is_file():
        try:
            # caches written by an earlier version saved split_special_tokens=True in their config: prompts that
            # spell a special token must encode to it, so load them with the transformers default
            return _checked_cache(AutoTokenizer.from_pretrained(str(target), split_special_tokens=False))
        except Exception as err:  # truncated or corrupt cache: rebuild it rather than fail every later run
            logger.warning("The cached tokenizer %s is unusable (%s); rebuilding it.", target, err)
            shutil.rmtree(target, ignore_errors=True)
    if cache:
        writable_cache_subdir(target.parent)  # an unwritable cache is named before the tokenizer is trained
        _remove_stale_tmp_dirs(target.parent)
    tok = wrap(_train_tokenizer(corpus.load_corpus("train")["text"], vocab_size))
    if cache:
        tmp = Path(make_temp_dir(str(target.parent), ".tmp-"))  # a shared cache stays readable by its group
        try:
            tok.save_pretrained(str(tmp))
            if not (target / "tokenizer.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                try:
                    os.replace(tmp, target)
                except OSError as err:
                    # another process published `target` between our rmtree and our rename (ENOTEMPTY/EEXIST):
                    # use its tokenizer if it is complete, and drop ours (removed in `finally`)
                    published = _load_published(target)
                    if published is None:
                        raise
                    if published.get_vocab() != tok.get_vocab():
                        logger.warning("%s, published by another process, differs from this build; using this one.",
                                       target)  # fmt: skip
                        return tok
                    logger.info("Another process published %s first (%s); using its tokenizer.", target, err)
                    return published
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tok


#: A temporary tokenizer folder (`.tmp-*`) older than this is the leftover of a build killed while saving: the save
#: takes well under a second, so a younger one may be another process's save in progress and is left alone.
_STALE_TMP_SECONDS = 600


def _remove_stale_tmp_dirs(folder: Path) -> None:
    """Remove the temporary folders that builds killed while saving left in the tokenizer cache `folder` (never read;
    an exception already removes its own in `build_tokenizer`'s `finally`)."""
    import time

    now = time.time()
    for stale in folder.glob(".tmp-*"):
        try:
            if stale.is_dir() and not stale.is_symlink() and now - stale.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # removed by another process meanwhile: nothing to do
            pass


def _checked_cache(tok):
    """`tok`, a tokenizer loaded from the cache, if it is one `build_tokenizer` saved: its BOS / EOS / PAD are this
    module's special tokens (a cache folder without its `tokenizer_config.json` loaded as a tokenizer with none, which
    the recipes then refused for a missing EOS naming a flag they do not have); else a `ValueError` saying which."""
    wanted = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    wrong = {name: getattr(tok, name, None) for name, token in wanted.items() if getattr(tok, name, None) != token}
    if wrong:
        raise ValueError(f"its special tokens are {wrong}, not {wanted}")
    return tok


def _load_published(target: Path):
    """The tokenizer another process published at `target`, or `None` if the folder is missing or incomplete."""
    from transformers import AutoTokenizer

    if not (target / "tokenizer.json").is_file():
        return None
    try:
        return _checked_cache(AutoTokenizer.from_pretrained(str(target), split_special_tokens=False))
    except Exception:  # half-written or foreign: let the caller's error stand
        return None
