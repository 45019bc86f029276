"""Retention statistics of a robots.txt-filtered corpus: documents and tokens kept and removed, per domain."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

from .robots import normalize_host


@dataclass
class RetentionStats:
    """Documents and tokens kept/removed per domain and overall, plus per-agent removal counts.

    Attributes:
        per_domain (`list[dict]`): One row per domain with `domain`, `docs`, `docs_removed`, `tokens`,
            `tokens_removed`, `docs_removed_pct`, `tokens_removed_pct`, sorted by removed tokens (descending).
        overall (`dict`): The same fields over the whole dataset (`domain` = `"ALL"`).
        per_agent (`dict[str, int]`): Documents each user agent is disallowed from (a document counts for every
            agent that is disallowed).
        token_unit (`str`): What a token is (`"tokenizer:<name>"`, `"column:<name>"` or `"whitespace"`).
    """

    per_domain: list[dict]
    overall: dict
    per_agent: dict[str, int] = field(default_factory=dict)
    token_unit: str = "whitespace"

    def to_dict(self) -> dict:
        return {
            "overall": self.overall,
            "per_domain": self.per_domain,
            "per_agent": self.per_agent,
            "token_unit": self.token_unit,
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The statistics as JSON; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from ..utils.io import atomic_write_text

            atomic_write_text(os.fspath(path), text + "\n")  # temporary file, then rename
        return text

    def to_table(self) -> str:
        """A Markdown table: one row per domain and a final `ALL` row."""
        header = ["domain", "docs", "docs removed", "% docs", f"tokens ({self.token_unit})", "tokens removed", "% tok"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 6) + "|"]
        for row in [*self.per_domain, self.overall]:
            lines.append(
                f"| {row['domain']} | {row['docs']} | {row['docs_removed']} | {row['docs_removed_pct']:.2f} | "
                f"{row['tokens']} | {row['tokens_removed']} | {row['tokens_removed_pct']:.2f} |"
            )
        if self.per_agent:
            lines += ["", "| user agent | docs disallowed |", "|---|---:|"]
            lines += [f"| {agent} | {n} |" for agent, n in self.per_agent.items()]
        return "\n".join(lines)


def _row(domain: str, docs: int, docs_removed: int, tokens: int, tokens_removed: int) -> dict:
    return {
        "domain": domain,
        "docs": docs,
        "docs_removed": docs_removed,
        "tokens": tokens,
        "tokens_removed": tokens_removed,
        "docs_removed_pct": 100.0 * docs_removed / docs if docs else 0.0,
        "tokens_removed_pct": 100.0 * tokens_removed / tokens if tokens else 0.0,
    }


_INT_DTYPES = frozenset(f"{u}int{b}" for u in ("", "u") for b in (8, 16, 32, 64))


def _check_column_types(dataset, compliant_column: str, token_column: str | None, agents_column: str | None) -> None:
    """The columns read as they are must hold what they are read as: a bool `compliant_column` (a list or string
    column would be read by truthiness: every document kept), non-negative integer `token_column` counts, and a
    list-of-strings `agents_column` (a string column would be counted per character). An empty dataset may hold null-
    typed columns (`Dataset.from_dict` of empty lists): it has nothing to misread, so they pass."""
    import datasets

    features = dataset.features

    def null(feature) -> bool:
        return len(dataset) == 0 and isinstance(feature, datasets.Value) and feature.dtype == "null"

    feature = features[compliant_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype == "bool") and not null(feature):
        raise TypeError(
            f"compliant_column={compliant_column!r} holds {feature!r}, not bool; pass the boolean column that "
            "annotate_compliance adds (robots_compliant), or cast it, e.g. dataset.cast_column(name, "
            "datasets.Value('bool'))."
        )
    if len(dataset) and not null(feature):
        missing = dataset.with_format("arrow")[compliant_column].null_count  # the rows of `dataset` only
        if missing:
            raise ValueError(
                f"compliant_column={compliant_column!r} has {missing} missing (null) decision(s): such a row is neither "
                "kept nor removed, and would be counted as removed; annotate every row (annotate_compliance) or drop "
                "the rows without a decision."
            )
    if token_column is not None:
        feature = features[token_column]
        if not (isinstance(feature, datasets.Value) and feature.dtype in _INT_DTYPES) and not null(feature):
            raise TypeError(
                f"token_column={token_column!r} holds {feature!r}, not integer token counts; pass a column of "
                "non-negative ints (or tokenizer= to count them)."
            )
        if len(dataset) and feature.dtype != "null":
            counts = dataset.with_format("arrow")[token_column]  # the rows of `dataset` only
            if counts.null_count:
                raise ValueError(
                    f"token_column={token_column!r} has {counts.null_count} missing (null) token count(s); count the "
                    "tokens of every row (or pass tokenizer= to count them)."
                )
        if len(dataset) and not feature.dtype.startswith("u"):
            import pyarrow.compute as pc

            lowest = pc.min(dataset.with_format("arrow")[token_column]).as_py()  # the rows of `dataset` only
            if lowest is not None and lowest < 0:
                raise ValueError(
                    f"token_column={token_column!r} holds a negative token count ({lowest}); counts must be >= 0."
                )
    if agents_column and agents_column in dataset.column_names:
        feature = features[agents_column]
        inner = getattr(feature, "feature", None)
        if not null(feature) and not (
            isinstance(feature, datasets.List | datasets.LargeList)
            and isinstance(inner, datasets.Value)
            and inner.dtype in ("string", "large_string", "null")
        ):
            raise TypeError(
                f"agents_column={agents_column!r} holds {feature!r}, not lists of agent names; pass the list-of-"
                "strings column annotate_compliance adds (disallowed_user_agents), or agents_column=None."
            )


def _check_agents_match(kept: list, agents: list, compliant_column: str, agents_column: str) -> None:
    """Refuse an agents column that describes another decision than `compliant_column`: a kept row naming a
    disallowing agent, or a removed row with an empty list (`annotate_compliance` records at least one agent for every
    removed row; `None`, no record, is accepted). Such a column is left by re-deciding only the boolean (e.g. against a
    newer snapshot), and its per-agent counts would belong to the earlier decision."""
    for i, (keep, names) in enumerate(zip(kept, agents)):
        if names is None or bool(keep) == (len(names) == 0):
            continue
        if keep:
            what = f"kept ({compliant_column}=True) but names {list(names)}"
        else:
            what = f"removed ({compliant_column}=False) but names no agent"
        raise ValueError(
            f"row {i} is {what} in agents_column={agents_column!r}: the two columns come from different decisions "
            "(e.g. annotate_compliance(..., agents_column=None) over an earlier annotation before 2026-12-05), so the "
            "per-agent counts would not match the removed documents. Annotate again with both columns "
            f"(annotate_compliance(..., agents_column={agents_column!r})), or pass agents_column=None to skip "
            "per-agent counts."
        )


def _column_values(dataset, name: str) -> list:
    """The values of column `name` as a list, read in one batch: `datasets` >= 4 hands back a lazy `Column` for
    `dataset[name]`, whose iteration formats one row at a time and whose `column[i]` slices the table for one row
    (about 1,000 times slower than reading the column: 20,000 rows took seconds)."""
    return dataset[name][:]


def _domain_names(dataset, domain_column: str) -> list:
    """Each row's domain as a name: a `ClassLabel` column's label names (its integer codes would be reported instead,
    and code 0 as `"<no host>"`; -1, no label, is `None`), any other value as its `str` (`None` stays `None`), so the
    rows sort by name whatever the column's type."""
    import datasets

    values = _column_values(dataset, domain_column)
    feature = dataset.features[domain_column]
    if isinstance(feature, datasets.ClassLabel):
        return [None if v is None or v < 0 else feature.int2str(v) for v in values]
    return [None if v is None else str(v) for v in values]


def compute_retention_stats(
    dataset,
    compliant_column: str = "robots_compliant",
    agents_column: str | None = "disallowed_user_agents",
    domain_column: str | None = None,
    url_column: str = "url",
    text_column: str = "text",
    tokenizer=None,
    token_column: str | None = None,
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> RetentionStats:
    """Count documents and tokens removed by the robots.txt filter, per domain and overall.

    Args:
        dataset (`datasets.Dataset`): Output of `annotate_compliance` (all documents, with the compliance column);
            its stored columns are read whatever its format (`set_format(columns=...)` hiding a column included).
        compliant_column (`str`, *optional*, defaults to `"robots_compliant"`): Boolean column (True = kept); another
            type is a `TypeError`, a null entry (no decision) a `ValueError`.
        agents_column (`str`, *optional*, defaults to `"disallowed_user_agents"`):
            Column with the disallowing agents (lists of strings), for per-agent counts (`None` or absent: skipped).
            It must agree with `compliant_column`: a kept row with an agent, or a removed row with `[]`, is a
            `ValueError` (the columns of two different decisions); a `None` entry is accepted.
        domain_column (`str`, *optional*): Column naming each document's domain; default: the URL's host.
        url_column (`str`, *optional*, defaults to `"url"`): URL column (used when `domain_column` is not given).
        text_column (`str`, *optional*, defaults to `"text"`): Text whose tokens are counted.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): Count tokens with this tokenizer (no special tokens
            added; text that spells one is counted as text).
        token_column (`str`, *optional*): Use this column of precomputed token counts (non-negative ints) instead.
        batch_size (`int`, *optional*, defaults to 1000): Rows per batch when counting tokens.
        num_proc (`int`, *optional*): Worker processes for token counting.

    Returns:
        `RetentionStats`; without `tokenizer` and `token_column` tokens are whitespace-separated words.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset (annotated with annotate_compliance), got {type(dataset)}.")
    # Read the stored columns as Python values whatever the dataset's format: `set_format(columns=...)` hides the
    # other columns from `dataset[name]` (a raw KeyError), and a numpy/torch format would hand back arrays.
    dataset = dataset.with_format(None)
    columns = dataset.column_names
    required = {"compliant_column": compliant_column}
    if domain_column is not None:
        required["domain_column"] = domain_column
    else:
        required["url_column"] = url_column
    if token_column is not None:
        required["token_column"] = token_column
    else:
        required["text_column"] = text_column
    for arg, name in required.items():
        if name not in columns:
            hint = " (run annotate_compliance first)" if arg == "compliant_column" else ""
            raise ValueError(f"{arg}={name!r} is not a column of the dataset{hint}; columns: {columns}.")
    if tokenizer is not None and token_column is not None:
        raise ValueError("pass either tokenizer or token_column, not both.")
    _check_column_types(dataset, compliant_column, token_column, agents_column)
    kept = _column_values(dataset, compliant_column)
    agents = _column_values(dataset, agents_column) if agents_column and agents_column in columns else None
    if agents is not None:
        _check_agents_match(kept, agents, compliant_column, agents_column)

    if token_column is not None:
        unit = f"column:{token_column}"
        counts_ds = dataset.select_columns([token_column]).rename_column(token_column, "_n_tokens")
    else:
        if tokenizer is None:
            unit = "whitespace"
        else:
            name = str(getattr(tokenizer, "name_or_path", "") or "").rstrip("/\\")
            unit = f"tokenizer:{os.path.basename(name) or type(tokenizer).__name__}"

        def count(batch):
            texts = [t or "" for t in batch[text_column]]
            if tokenizer is None:
                return {"_n_tokens": [len(t.split()) for t in texts]}
            # documents, not prompts: a spelled "<|eos|>" in a page is counted as the text it is
            ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            return {"_n_tokens": [len(x) for x in ids]}

        counts_ds = dataset.select_columns([text_column]).map(
            count, batched=True, batch_size=batch_size, num_proc=num_proc, remove_columns=[text_column],
            desc="counting tokens",
        )
    # `map` returns an empty dataset unchanged (no `_n_tokens` column): an empty dataset counts no tokens.
    n_tokens = _column_values(counts_ds, "_n_tokens") if len(counts_ds) else []
    if domain_column:
        domains = _domain_names(dataset, domain_column)
    else:
        domains = [normalize_host(u or "") for u in _column_values(dataset, url_column)]

    acc = defaultdict(lambda: [0, 0, 0, 0])
    per_agent: dict[str, int] = defaultdict(int)
    for i, (domain, keep, tokens) in enumerate(zip(domains, kept, n_tokens)):
        a = acc[domain or "<no host>"]
        a[0] += 1
        a[2] += int(tokens)
        if not keep:
            a[1] += 1
            a[3] += int(tokens)
            if agents is not None:
                for agent in agents[i] or ():
                    per_agent[agent] += 1
    rows = [_row(d, *v) for d, v in acc.items()]
    rows.sort(key=lambda r: (-r["tokens_removed"], r["domain"]))
    totals = [sum(v[j] for v in acc.values()) for j in range(4)]
    per_agent_sorted = dict(sorted(per_agent.items(), key=lambda kv: (-kv[1], kv[0])))
    return RetentionStats(rows, _row("ALL", *totals), per_agent_sorted, unit)
