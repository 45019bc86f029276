"""Canary injection and extraction-based memorization measurement (Carlini et al. 2023 style, as in the paper).

A canary is a unique sequence inserted into some clients' training data with a replication count. After training,
the model is prompted with `L` tokens of the canary (greedy decoding, optional frequency penalty) and its continuation
is compared with the true continuation on the first 50 tokens: *exact* memorization means all 50 match; *approximate*
memorization means a character-level BLEU >= 0.75. Rates are reported per replication count and prefix length.
"""

from __future__ import annotations

import itertools
import math
import numbers
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor

from ..utils.checks import is_int, is_real

PAPER_PREFIX_LENGTHS = (10, 50, 100, 200, 500)


@dataclass
class Canary:
    """One sensitive sequence: its id, text, replication count and the clients holding its copies."""

    canary_id: str
    text: str
    replication: int
    clients: tuple[int, ...] = ()


def _finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def make_canaries(
    num_canaries: int,
    replication_counts: dict[int, float] | None = None,
    num_words: int = 120,
    vocabulary: Sequence[str] | None = None,
    seed: int = 42,
    texts: Sequence[str] | None = None,
) -> list[Canary]:
    """Canaries: a record id followed by random words (or by the first words of `texts`), with replication counts
    assigned by fraction.

    Args:
        num_canaries (`int`): number of distinct canaries (> 0).
        replication_counts (`dict[int, float]`, *optional*): replication count -> fraction of canaries, defaults to
            the paper's `{10: 0.3, 1: 0.7}`.
        num_words (`int`, *optional*, defaults to 120): words per canary (make the canary longer, in tokens, than the
            largest prefix length + 50).
        vocabulary (`Sequence[str]`, *optional*): words to draw from; defaults to a fixed list of common words.
        seed (`int`, *optional*, defaults to 42): random seed.
        texts (`Sequence[str]`, *optional*): held-out documents to use as canary bodies (natural text, one per
            canary, cut to `num_words` words) instead of random words.
    """
    if not is_int(num_canaries) or num_canaries <= 0:
        raise ValueError(f"`num_canaries` must be an integer > 0, got {num_canaries!r}.")
    if not is_int(num_words) or num_words < 1:
        raise ValueError(f"`num_words` must be an integer >= 1, got {num_words!r}.")
    docs: list = []
    if texts is not None:
        # any sized collection of str, read in its order (a list, a datasets Column, a numpy array, a pandas Series
        # whatever its index: `texts[i]` would look a filtered Series' index label up, a raw KeyError)
        if isinstance(texts, str | Mapping) or not (hasattr(texts, "__len__") and hasattr(texts, "__iter__")):
            raise ValueError("`texts` must be a sequence of str documents (one per canary), or None for random words.")
        if getattr(texts, "ndim", 1) != 1:  # a DataFrame iterates over its column names, a 2-D array over rows
            raise ValueError(
                f"`texts` must be a one-dimensional sequence of str documents, got a {texts.ndim}-"
                f"dimensional {type(texts).__name__}; pass its text column, e.g. texts=df['text']."
            )
        if isinstance(texts, set | frozenset):  # its order, so the canaries, would differ between processes
            raise ValueError("`texts` is a set, whose order changes between processes; pass sorted(texts) or a list.")
        if len(texts) < num_canaries:
            raise ValueError(f"`texts` has {len(texts)} documents for {num_canaries} canaries; pass more documents.")
        docs = list(itertools.islice(iter(texts), num_canaries))
        if not all(isinstance(doc, str) for doc in docs):
            raise ValueError("`texts` must be a sequence of str documents (one per canary), or None for random words.")
    if replication_counts is not None and not (isinstance(replication_counts, Mapping) and replication_counts):
        raise ValueError(
            "`replication_counts` must be a non-empty dict of replication count -> fraction of canaries (e.g. "
            f"{{10: 0.3, 1: 0.7}}), or None for that default; got {replication_counts!r}."
        )
    counts = {10: 0.3, 1: 0.7} if replication_counts is None else dict(replication_counts)
    if (
        any(not _finite_number(r) or r != int(r) or int(r) < 1 for r in counts)
        or any(not _finite_number(f) or f < 0 for f in counts.values())
        or sum(counts.values()) <= 0
    ):
        raise ValueError(
            f"`replication_counts` must map integer counts >= 1 to finite non-negative fractions, got {counts}."
        )
    words = _DEFAULT_WORDS
    if vocabulary is not None:
        bad = isinstance(vocabulary, str | Mapping) or not hasattr(vocabulary, "__iter__")
        if not bad:  # a set is sorted: its order is salted per process (str hashing), the canaries would differ
            words = sorted(vocabulary) if isinstance(vocabulary, set | frozenset) else list(vocabulary)
            bad = not all(isinstance(w, str) and w.strip() for w in words)
        if bad:
            raise ValueError(
                "`vocabulary` must be a list of words (non-empty str), or None for the default words; "
                f"got {vocabulary!r:.200}."
            )
    if len(set(words)) < 2:
        raise ValueError("`vocabulary` needs at least 2 distinct words.")
    rng = random.Random(seed)
    total = sum(counts.values())
    levels: list[int] = []
    for rep, frac in sorted(counts.items(), reverse=True):
        levels += [int(rep)] * int(round(num_canaries * frac / total))
    levels = (levels + [min(counts)] * num_canaries)[:num_canaries]
    canaries = []
    for i, rep in enumerate(levels):
        rid = f"{rng.randrange(100, 999)}-{rng.randrange(10, 99)}"
        if texts is not None:
            body = " ".join(docs[i].split()[:num_words])
        else:
            body = " ".join(rng.choice(words) for _ in range(num_words))
        canaries.append(Canary(canary_id=f"canary-{i}", text=f"Record {rid}: {body}", replication=rep))
    return canaries


def assign_canaries(
    canaries: Sequence[Canary],
    client_sizes: Sequence[int],
    strategy: str = "proportional",
    seed: int = 42,
) -> list[list[Canary]]:
    """Distribute the copies of every canary over clients.

    Strategies:
        - `"proportional"` (paper): all copies are shuffled and dealt to clients in proportion to `client_sizes`, so
          the copies of one canary can land at several clients.
        - `"single_client"`: all copies of a canary go to one client (chosen in proportion to `client_sizes`).

    Returns:
        `list[list[Canary]]`: for each client, the canary copies it holds (a canary appears once per copy). The
        `clients` field of each input canary is filled in.
    """
    if strategy not in ("proportional", "single_client"):
        raise ValueError(f"`strategy` must be 'proportional' or 'single_client', got {strategy!r}.")
    if isinstance(client_sizes, str | Mapping) or not hasattr(client_sizes, "__len__"):
        raise ValueError(f"`client_sizes` must be a sequence of client sizes (one per client), got {client_sizes!r}.")
    if (
        not len(client_sizes)
        or not all(_finite_number(s) and s >= 0 for s in client_sizes)
        or sum(client_sizes) <= 0
    ):
        raise ValueError(
            f"`client_sizes` must be finite non-negative numbers with a positive sum, got {list(client_sizes)!r}."
        )
    canaries = canaries if isinstance(canaries, str) else list(canaries)  # a generator is read once, here
    bad = next((c for c in canaries if not isinstance(c, Canary)), None)
    if isinstance(canaries, str) or bad is not None:
        raise ValueError(
            f"`canaries` must be Canary objects (from make_canaries), got {bad if bad is not None else canaries!r:.80}."
        )
    rng = random.Random(seed)
    n = len(client_sizes)
    total = float(sum(client_sizes))
    out: list[list[Canary]] = [[] for _ in range(n)]
    if strategy == "single_client":
        for c in canaries:
            client = rng.choices(range(n), weights=client_sizes)[0]
            out[client] += [c] * c.replication
            c.clients = (client,)
        return out
    copies = [c for c in canaries for _ in range(c.replication)]
    rng.shuffle(copies)
    bounds = [round(len(copies) * sum(client_sizes[: i + 1]) / total) for i in range(n)]
    start = 0
    holders: dict[str, set[int]] = {c.canary_id: set() for c in canaries}
    for i, end in enumerate(bounds):
        out[i] = copies[start:end]
        for c in out[i]:
            holders[c.canary_id].add(i)
        start = end
    for c in canaries:
        c.clients = tuple(sorted(holders[c.canary_id]))
    return out


class FrequencyPenaltyLogitsProcessor(LogitsProcessor):
    """vLLM/OpenAI-style frequency penalty: subtract `penalty * count(token in the generated tokens so far)`.

    Unlike `RepetitionPenaltyLogitsProcessor` (multiplicative, counts the prompt too) this is additive and only counts
    tokens generated after the prompt, as the reference measurement does with `frequency_penalty=1.0`.

    Args:
        penalty (`float`): the penalty per previous occurrence (0 disables it).
        prompt_length (`int`): number of prompt tokens at the start of `input_ids` (not counted).
    """

    def __init__(self, penalty: float, prompt_length: int):
        if not (is_real(penalty) and math.isfinite(penalty)):
            raise ValueError(f"`penalty` must be a finite number, got {penalty!r}.")
        if not (is_int(prompt_length) and prompt_length >= 0):
            raise ValueError(f"`prompt_length` must be an integer >= 0 (prompt tokens not counted), got {prompt_length!r}.")
        self.penalty = float(penalty)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if self.penalty == 0.0 or generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.penalty * counts


def char_bleu(reference: str, hypothesis: str, max_order: int = 4) -> float:
    """Sentence BLEU over characters with uniform n-gram weights, brevity penalty and no smoothing.

    Equals `nltk.translate.bleu_score.sentence_bleu([reference], hypothesis)` on strings (NLTK then works on
    characters): 0 when any n-gram order has no match, and 0 when either text is the empty string.

    Args:
        reference (`str`): the true continuation.
        hypothesis (`str`): the generated continuation.
        max_order (`int`, *optional*, defaults to 4): the longest n-gram, an int >= 1 (with no n-gram order at all
            the score would be the brevity penalty alone, high for any text of similar length).

    Raises:
        `TypeError`: `reference` or `hypothesis` is not a `str` (`None`, a list, a dict), or `max_order` is not an int.
        `ValueError`: `max_order` < 1.
    """
    for name, text in (("reference", reference), ("hypothesis", hypothesis)):
        if not isinstance(text, str):
            raise TypeError(
                f"char_bleu: `{name}` must be a str, got {type(text).__name__} ({text!r:.80}); decode token ids "
                "first, and pass '' for a missing text (it scores 0)."
            )
    if not is_int(max_order):
        raise TypeError(f"char_bleu: `max_order` must be an int >= 1 (4 is standard BLEU), got {max_order!r}.")
    if max_order < 1:
        raise ValueError(
            f"char_bleu: `max_order` must be >= 1 (4 is standard BLEU), got {max_order}; with no n-gram order the "
            "score is the brevity penalty alone."
        )
    max_order = int(max_order)
    if not hypothesis or not reference:
        return 0.0
    log_p = 0.0
    for n in range(1, max_order + 1):
        hyp = Counter(hypothesis[i : i + n] for i in range(len(hypothesis) - n + 1))
        ref = Counter(reference[i : i + n] for i in range(len(reference) - n + 1))
        total = sum(hyp.values())
        match = sum(min(c, ref[g]) for g, c in hyp.items())
        if total == 0 or match == 0:
            return 0.0
        log_p += math.log(match / total) / max_order
    c, r = len(hypothesis), len(reference)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p)


def matching_prefix_tokens(reference_ids: Sequence[int], generated_ids: Sequence[int], window: int = 50) -> int:
    """Length of the common prefix of the first `window` reference and generated tokens (`window`: an integer >= 1;
    another value is refused with a `ValueError`, as in [`score_continuation`])."""
    if not is_int(window) or window < 1:
        raise ValueError(
            f"`window` must be an integer >= 1 (the tokens compared, 50 in the paper), got {window!r}: a negative "
            "window would slice tokens off the end and count a prefix of the wrong length."
        )
    n = 0
    for a, b in zip(reference_ids[:window], generated_ids[:window]):
        if a != b:
            break
        n += 1
    return n


def _check_window_and_threshold(window, bleu_threshold) -> None:
    if not is_int(window) or window < 1:
        raise ValueError(f"`window` must be an integer >= 1, got {window!r}.")
    if not (is_real(bleu_threshold) and 0 < bleu_threshold <= 1):
        raise ValueError(
            f"`bleu_threshold` must be a number in (0, 1] (a character-BLEU score), got {bleu_threshold!r}."
        )


def score_continuation(
    tokenizer, reference_text: str, generated_text: str, window: int = 50, bleu_threshold: float = 0.75
) -> dict[str, float | bool]:
    """Compare a generated continuation with the true one, on re-tokenized text truncated to `window` tokens.

    Returns:
        `dict`: `matching_tokens`, `exact` (all `window` tokens match), `bleu` (character-level, rounded to 2
        decimals as in the reference) and `approximate` (`bleu >= bleu_threshold`).

    Raises:
        `ValueError`: when `window` is not an integer >= 1 or `bleu_threshold` is not a number in (0, 1] (as
            [`measure_memorization`]).
    """
    _check_window_and_threshold(window, bleu_threshold)
    ref_ids = tokenizer(reference_text, add_special_tokens=False)["input_ids"][:window]
    gen_ids = tokenizer(generated_text, add_special_tokens=False)["input_ids"][:window]
    matching = matching_prefix_tokens(ref_ids, gen_ids, window)
    bleu = round(char_bleu(tokenizer.decode(ref_ids), tokenizer.decode(gen_ids)), 2)
    return {
        "matching_tokens": matching,
        "exact": matching == window and len(ref_ids) >= window,
        "bleu": bleu,
        "approximate": bleu >= bleu_threshold,
    }


def split_index(num_tokens: int, min_prefix: int, window: int, rng: random.Random) -> int | None:
    """Where the prompt ends: uniform in `[min_prefix, num_tokens - window - 1]`, or `None` when the canary is too
    short (`num_tokens <= min_prefix + window`).

    This is the reference's rule: it draws `np.random.randint(500, T - 50)`, whose upper bound is excluded, with 500
    the largest prefix length, and skips notes with `T <= 550`.
    """
    if num_tokens <= min_prefix + window:
        return None
    return rng.randint(min_prefix, num_tokens - window - 1)


def _stop_token_ids(model, tokenizer) -> set[int]:
    """The ids greedy decoding stops at, as the reference's vLLM does (it stops on eos or pad): the tokenizer's
    end-of-sequence and padding tokens and the end-of-sequence ids of the model's own `generation_config`."""
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = getattr(getattr(owner, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    for special in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if special is not None:
            ids.append(special)
    return {int(i) for i in ids}


@contextmanager
def _greedy_generation_config(
    model, max_new_tokens: int, pad_token_id: int | None, eos_token_ids: list[int] | None = None
) -> Iterator[None]:
    """Within the block `model.generate` decodes greedily with at most `max_new_tokens` new tokens, stopping at the
    end-of-sequence token, from a clean `GenerationConfig` (the length and the pad / end-of-sequence token ids only)
    instead of the model's own.

    `generate` fills every option that a `generation_config` argument leaves unset from the model's own
    generation_config, so passing a clean one is not enough: the model's (a PEFT model's base model's, which its
    `generate` uses) is replaced for the duration of the block, then put back.
    """
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    shipped = getattr(owner, "generation_config", None)
    if not isinstance(shipped, GenerationConfig):  # not a transformers model: nothing to replace
        yield
        return
    owner.generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_ids or shipped.eos_token_id,
    )
    try:
        yield
    finally:
        owner.generation_config = shipped


@torch.no_grad()
def measure_memorization(
    model,
    tokenizer,
    canaries: Sequence[Canary],
    prefix_lengths: Sequence[int] = PAPER_PREFIX_LENGTHS,
    window: int = 50,
    bleu_threshold: float = 0.75,
    frequency_penalty: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 42,
) -> dict:
    """Prompt the model with canary prefixes and report exact / approximate extraction rates per replication count.

    For each canary one split index `s` is drawn (see [`split_index`]); for each prefix length `L` the prompt is
    `tokens[s-L:s]` and the greedy continuation (with the frequency penalty) is scored against `tokens[s:]`. As in the
    reference (vLLM, temperature 0, stop on eos or pad), decoding stops at the first end-of-sequence token (the
    tokenizer's or the model's `generation_config`'s) or padding token (the tokenizer's): a continuation that ends early
    is scored as it is, shorter than the window, so it is never an exact match (the target always has at least
    `window` tokens). Prompts are the canary's own tokens, without special tokens (no BOS), as the canaries are
    trained (`canary_rows`; docs/federated.md, "Extraction", on the reference's BOS). Every prompt's token ids are
    checked against the model's input embedding before the first `generate` (a `ValueError` naming the prefix length
    and the id). Batched probes give the same
    records as probes one at a time. The decoding is greedy whatever the model's own `generation_config` holds (a checkpoint's `repetition_penalty`,
    `no_repeat_ngram_size`, `suppress_tokens`, sampling settings, ...): the model generates from a clean
    `GenerationConfig` (the lengths and the pad / end-of-sequence token ids only) during the call.

    Args:
        model: a causal LM (`PreTrainedModel` or PEFT model) with `generate`.
        tokenizer: its tokenizer.
        canaries (`Sequence[Canary]`): the distinct canaries to probe.
        prefix_lengths (`Sequence[int]`, *optional*): prompt lengths in tokens, paper default `(10, 50, 100, 200, 500)`.
        window (`int`, *optional*, defaults to 50): tokens compared.
        bleu_threshold (`float`, *optional*, defaults to 0.75): approximate-memorization threshold.
        frequency_penalty (`float`, *optional*, defaults to 1.0): additive frequency penalty (0 = pure greedy), a
            finite number.
        max_new_tokens (`int`, *optional*): most tokens generated (fewer when the model ends the text), defaults to
            `window + 10` (slack for re-tokenization); at least `window` (a shorter generation can never match).
        batch_size (`int`, *optional*, defaults to 16): prompts per `generate` call (same length, no padding), an
            integer >= 1.
        seed (`int`, *optional*, defaults to 42): seed of the split-index draw.

    Returns:
        `dict` with `per_replication` (`{rep: {"exact": {L: rate}, "approximate": {L: rate}, "exact_mean",
        "approximate_mean", "exact_worst", "approximate_worst", "bleu_mean", "matching_tokens_mean",
        "num_canaries"}}`), `overall` (same keys over all
        canaries), `num_skipped` (canaries too short) and `records` (one dict per canary and prefix length).
    """
    if not canaries:
        raise ValueError("`canaries` is empty: pass at least one canary.")
    if not isinstance(prefix_lengths, str | bytes):
        prefix_lengths = list(prefix_lengths)
    if isinstance(prefix_lengths, str | bytes) or not all(is_int(x) and x >= 1 for x in prefix_lengths):
        raise ValueError(
            f"`prefix_lengths` must be positive integers (prompt lengths in tokens), got {prefix_lengths!r}: a "
            "fractional length would be truncated to another prefix than the one asked for."
        )
    lengths = sorted({int(x) for x in prefix_lengths})
    if not lengths:
        raise ValueError(f"`prefix_lengths` must be positive integers, got {list(prefix_lengths)}.")
    _check_window_and_threshold(window, bleu_threshold)
    if max_new_tokens is not None and not (is_int(max_new_tokens) and max_new_tokens >= 1):
        raise ValueError(f"`max_new_tokens` must be an integer >= 1 or None (window + 10), got {max_new_tokens!r}.")
    if max_new_tokens is not None and max_new_tokens < window:
        raise ValueError(
            f"`max_new_tokens={max_new_tokens}` is below `window={window}`: a generation shorter than the window can "
            f"never match it, so every probe would score as not extracted. Pass `max_new_tokens` >= {window} (default "
            "None: window + 10) or a smaller `window`."
        )
    if not (is_real(frequency_penalty) and math.isfinite(frequency_penalty)):
        raise ValueError(
            f"`frequency_penalty` must be a finite number (1.0 as in the paper, 0 for pure greedy decoding), got "
            f"{frequency_penalty!r}."
        )
    if not (is_int(batch_size) and batch_size >= 1):
        raise ValueError(
            f"`batch_size` must be an integer >= 1 (prompts per `generate` call), got {batch_size!r}: a batch size "
            "below 1 would probe no canary at all and report no memorization."
        )
    max_new = int(window) + 10 if max_new_tokens is None else int(max_new_tokens)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:  # the model is put back in training mode even when a probe fails
        probes = []
        skipped = 0
        for c in canaries:
            ids = tokenizer(c.text, add_special_tokens=False)["input_ids"]
            s = split_index(len(ids), lengths[-1], window, rng)
            if s is None:
                skipped += 1
                continue
            probes.append((c, ids, s))
        # every prompt's token ids are checked before the first `generate`: on CUDA an id outside the embedding is a
        # device-side assert (a RuntimeError that poisons the CUDA context), not the IndexError translated below
        for length in lengths:
            _refuse_foreign_ids(
                model,
                [ids[s - length : s] for _, ids, s in probes],
                f"a probe of prefix length {length} plus `max_new_tokens={max_new}` (default window + 10)",
            )
        records = []
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        stop = _stop_token_ids(model, tokenizer)
        with _greedy_generation_config(model, max_new, pad_id, sorted(stop)):
            for length in lengths:
                for start in range(0, len(probes), int(batch_size)):
                    chunk = probes[start : start + batch_size]
                    prompts = torch.tensor([ids[s - length : s] for _, ids, s in chunk], device=device)
                    processors = []
                    if frequency_penalty:
                        from transformers import LogitsProcessorList

                        processors = LogitsProcessorList([FrequencyPenaltyLogitsProcessor(frequency_penalty, length)])
                    try:
                        out = model.generate(
                            input_ids=prompts,
                            attention_mask=torch.ones_like(prompts),
                            max_new_tokens=max_new,
                            do_sample=False,
                            logits_processor=processors or None,
                            pad_token_id=pad_id,
                        )
                    except IndexError as err:  # a token id past the embedding, or a position table past its end (GPT-2, OPT)
                        _refuse_too_long(
                            model,
                            prompts,
                            length + max_new,
                            f"a probe of prefix length {length} plus `max_new_tokens={max_new}` (default window + 10)",
                            "pass shorter `prefix_lengths` or a smaller `max_new_tokens` / `window`",
                            err,
                        )
                        raise
                    for (c, ids, s), row in zip(chunk, out[:, length:].tolist()):
                        # greedy decoding ends at the first end-of-sequence or padding token (the batch pads rows
                        # that ended)
                        row = row[: next((i for i, t in enumerate(row) if t in stop), len(row))]
                        truth = tokenizer.decode(ids[s:], skip_special_tokens=True)
                        gen = tokenizer.decode(row, skip_special_tokens=True)
                        rec = score_continuation(tokenizer, truth, gen, window, bleu_threshold)
                        rec.update(canary_id=c.canary_id, replication=c.replication, prefix_length=length)
                        records.append(rec)
    finally:
        model.train(was_training)
    return summarize_records(records, lengths) | {"num_skipped": skipped, "records": records}


def summarize_records(records: Sequence[dict], prefix_lengths: Sequence[int]) -> dict:
    """Aggregate per-probe records into rates per replication count (mean and worst case over prefix lengths).

    A cell (replication count, prefix length) is reported only when it has probes: a prefix length with no probe
    for a replication count is absent from that count's `exact` / `approximate` dicts and does not enter its mean
    or worst case (it is not a rate of 0). `*_mean` is the mean over the prefix lengths present, `*_worst` the
    largest of their rates. In `overall`, `exact` / `approximate` are the rates per prefix length over all probes,
    `*_mean` their mean, and `*_worst` the largest rate over all (prefix length, replication count) cells, the
    reference's "worst case" for approximate memorization (its exact worst case is `per_replication[1]`'s
    `exact_worst`). With no probe at all the means and worst cases are `nan`.
    """
    nan = float("nan")

    def rates(rows: list[dict]) -> dict:
        res: dict = {"exact": {}, "approximate": {}}
        for length in prefix_lengths:
            sel = [r for r in rows if int(r["prefix_length"]) == int(length)]
            if sel:  # a cell without probes is absent, never a 0.0 rate
                for key in ("exact", "approximate"):
                    res[key][int(length)] = sum(bool(r[key]) for r in sel) / len(sel)
        return res

    def block(rows: list[dict], cells: list[dict] | None = None) -> dict:
        res = rates(rows)
        for key in ("exact", "approximate"):
            vals = list(res[key].values())
            worst = [v for c in cells for v in c[key].values()] if cells is not None else vals
            res[f"{key}_mean"] = sum(vals) / len(vals) if vals else nan
            res[f"{key}_worst"] = max(worst) if worst else nan
        for key in ("bleu", "matching_tokens"):  # continuous scores, finer than the two rates
            vals = [float(r[key]) for r in rows if key in r]
            res[f"{key}_mean"] = sum(vals) / len(vals) if vals else nan
        res["num_canaries"] = len({r["canary_id"] for r in rows})
        return res

    reps = sorted({int(r["replication"]) for r in records})
    per_rep = {rep: block([r for r in records if int(r["replication"]) == rep]) for rep in reps}
    return {"per_replication": per_rep, "overall": block(list(records), list(per_rep.values()))}


_DEFAULT_WORDS = (
    "alpha amber anchor apple arrow atlas autumn badge banner basin beacon berry birch blade blossom bridge bronze "
    "cabin canyon carbon cedar chalk charm cinder citrus clover cobalt comet coral cotton crater crystal dagger "
    "delta desert dune ember falcon feather fern fjord flint forest fossil garnet glacier granite gravel harbor "
    "hazel helium heron hollow horizon island ivory jasper jungle kernel lagoon lantern lemon linen lotus magnet "
    "maple marble meadow meteor mineral mirror monsoon mosaic nectar nickel oasis ocean olive onyx orbit orchid "
    "pebble pepper pine planet plum polar prairie prism quartz quill raven reef ridge river saffron sapphire "
    "shadow silver slate spruce summit tangerine thistle thunder timber topaz tundra valley velvet violet walnut "
    "willow zephyr"
).split()


def _embedding_rows(model) -> int | None:
    """Rows of the model's input embedding, `None` when it has no `nn.Embedding`-like one (`num_embeddings`)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    return int(rows) if is_int(rows) else None


def _refuse_foreign_ids(model, prompts: Sequence[Sequence[int]], what: str, err: BaseException | None = None) -> None:
    """Raise a `ValueError` naming `what` when a token id of `prompts` (lists of ids, or a tensor) lies outside the
    model's input embedding (a tokenizer of another vocabulary). Called on the host before any device work: on CUDA
    such an id is an opaque device-side assert rather than the CPU's IndexError."""
    rows = _embedding_rows(model)
    if rows is None:
        return
    flat = prompts.flatten() if isinstance(prompts, torch.Tensor) else torch.tensor([t for p in prompts for t in p])
    outside = (flat < 0) | (flat >= rows)
    if not bool(outside.any()):
        return
    bad = int(flat[outside][0])
    cause = f" (its forward failed with IndexError: {err})" if err is not None else ""
    raise ValueError(
        f"{what} holds token id {bad}, but the model's input embedding has {rows} rows (ids 0..{rows - 1}): the "
        f"tokenizer does not match the model{cause}; pass the model's own tokenizer."
    ) from err


def _refuse_too_long(model, ids: torch.Tensor, num_tokens: int, what: str, fix: str, err: IndexError) -> None:
    """Raise a `ValueError` naming `what` when its token `ids` lie outside the model's input embedding (a tokenizer of
    another vocabulary), else when `num_tokens` exceeds the model's `max_position_embeddings` (the `IndexError` `err`
    is then a learned position table indexed past its end); return otherwise (another cause: re-raise `err`)."""
    _refuse_foreign_ids(model, ids, what, err)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if is_int(limit) and num_tokens > limit:
        raise ValueError(
            f"{what} needs {num_tokens} positions, but the model has `max_position_embeddings={limit}` (its forward "
            f"failed with IndexError: {err}); {fix}."
        ) from err


@torch.no_grad()
def text_losses(model, tokenizer, texts: Sequence[str]) -> list[float]:
    """Mean next-token negative log-likelihood (nats per token) of each text under `model` (no special tokens)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if ids.shape[1] < 2:
                raise ValueError(f"Text {text[:40]!r} has fewer than 2 tokens: nothing to score.")
            # checked on the host, before the copy to the model's device (on CUDA a foreign id is a device assert)
            _refuse_foreign_ids(model, ids, f"text {len(out)} ({text[:40]!r}...)")
            ids = ids.to(device)
            try:
                out.append(float(model(input_ids=ids, labels=ids).loss))
            except IndexError as err:  # a token id past the embedding, or a position table past its end (GPT-2, OPT)
                _refuse_too_long(
                    model, ids, ids.shape[1], f"text {len(out)} ({text[:40]!r}...)", "cut the texts to fewer tokens", err
                )
                raise
    finally:
        model.train(was_training)
    return out


def canary_exposure(model, tokenizer, members: Sequence[str], references: Sequence[str]) -> float:
    """Loss-gap exposure of `members` (canaries seen in training): the mean per-token loss of `references`
    (comparable texts never trained on) minus that of the members, in nats per token.

    About 0 means the model treats the canaries like unseen text; the larger it is, the more a loss-threshold
    membership-inference attacker (Yeom et al. 2018) can tell the canaries apart, even when greedy extraction still
    fails. It is the continuous counterpart of Carlini et al.'s rank-based exposure.
    """
    if not members or not references:
        raise ValueError("`members` and `references` must both be non-empty.")
    m, r = text_losses(model, tokenizer, members), text_losses(model, tokenizer, references)
    return sum(r) / len(r) - sum(m) / len(m)
