"""`datasets` helpers: add robots.txt compliance columns or drop non-compliant documents."""

from __future__ import annotations

from .robots import RobotsCompliance

#: The agents column `annotate_compliance` adds by default (and `compute_retention_stats` reads by default).
DEFAULT_AGENTS_COLUMN = "disallowed_user_agents"


def _check_inputs(dataset, checker, url_column: str, num_proc: int | None, batch_size: int) -> None:
    import datasets

    if not isinstance(checker, RobotsCompliance):
        raise TypeError(
            f"checker must be a RobotsCompliance, got {type(checker).__name__}; build one with "
            "RobotsCompliance(RobotsTxtStore.load(path))."
        )
    if not isinstance(dataset, datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict):
        raise TypeError(f"dataset must be a datasets.Dataset, IterableDataset or DatasetDict, got {type(dataset)}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive int or None, got {num_proc!r}.")
    if num_proc is not None and num_proc > 1 and isinstance(dataset, datasets.IterableDataset):
        raise ValueError("num_proc is not supported for an IterableDataset; drop num_proc or load a map-style Dataset.")
    splits = dataset.values() if isinstance(dataset, datasets.DatasetDict) else [dataset]
    for split in splits:
        columns = split.column_names
        if columns is not None and url_column not in columns:
            raise ValueError(
                f"url_column={url_column!r} is not a column of the dataset (columns: {columns}); pass the column "
                "holding each document's URL, e.g. url_column='metadata.url' after flattening, or add one."
            )
        feature = (split.features or {}).get(url_column)
        if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string", "null"):
            raise TypeError(
                f"url_column={url_column!r} holds {feature!r}, not strings; URLs must be str (None for a missing "
                f"URL). Cast it first, e.g. dataset.cast_column({url_column!r}, datasets.Value('string')), or pass "
                "the column that holds the URLs."
            )


def _check_column_names(url_column: str, column: str | None, agents_column: str | None, column_optional: bool) -> None:
    """The names of the compliance columns: non-empty, not the same, and not `url_column` (the URLs would be
    replaced by the compliance values). `column` may be `None` only where `column_optional`."""
    for name, value in (("column", column), ("agents_column", agents_column)):
        optional = column_optional or name == "agents_column"
        if (value is None and not optional) or (value is not None and (not isinstance(value, str) or not value)):
            allowed = "a non-empty column name or None" if optional else "a non-empty column name"
            raise ValueError(f"{name} must be {allowed}, got {value!r}.")
        if value is not None and value == url_column:
            default = "robots_compliant" if name == "column" else "disallowed_user_agents"
            raise ValueError(
                f"{name}={value!r} is the url_column: its URLs would be replaced by compliance values; pass another "
                f"name for {name} (default {default!r})."
            )
    if column is not None and column == agents_column:
        raise ValueError(f"column and agents_column are both {column!r}; pass two names (or None for one).")


def annotate_compliance(
    dataset,
    checker: RobotsCompliance,
    url_column: str = "url",
    column: str = "robots_compliant",
    agents_column: str | None = "disallowed_user_agents",
    batch_size: int = 1000,
    num_proc: int | None = None,
):
    """Add a boolean compliance column (and the list of disallowing agents) to a dataset.

    Args:
        dataset (`datasets.Dataset`, `IterableDataset` or `DatasetDict`): Documents with a URL column.
        checker (`RobotsCompliance`): The robots.txt decision maker.
        url_column (`str`, *optional*, defaults to `"url"`): Column holding each document's URL.
        column (`str`, *optional*, defaults to `"robots_compliant"`): Name of the added boolean column.
        agents_column (`str`, *optional*, defaults to `"disallowed_user_agents"`):
            Name of the added list-of-strings column with the agents that are disallowed (`None`: not added, and a
            `disallowed_user_agents` column of an earlier annotation is dropped: it would describe the earlier
            decision beside this one's `column`, and `compute_retention_stats` reads it by default).
            `column` and `agents_column` must be two non-empty names other than `url_column`.
        batch_size (`int`, *optional*, defaults to 1000): Rows per `map` batch.
        num_proc (`int`, *optional*): Worker processes for `Dataset.map` (each builds its own host cache).

    Returns:
        The dataset with the new column(s); row order and other columns unchanged.
    """
    _check_inputs(dataset, checker, url_column, num_proc, batch_size)
    _check_column_names(url_column, column, agents_column, column_optional=False)
    # without an agents column of its own, an earlier annotation's one would be left beside the new decision (kept
    # rows still naming the old opt-out, removed rows with none), as filter_compliant / RobotsTxtFilter never leave it
    stale = DEFAULT_AGENTS_COLUMN if agents_column is None and column != DEFAULT_AGENTS_COLUMN else None

    def annotate(batch):
        agents = checker.disallowed_agents_batch(batch[url_column])
        out = {column: [not a for a in agents]}
        if agents_column is not None:
            out[agents_column] = [list(a) for a in agents]
        return out

    import datasets

    def with_new_columns(features):
        if features is None:
            return None
        features = features.copy()
        features[column] = datasets.Value("bool")
        if agents_column is not None:
            features[agents_column] = datasets.List(datasets.Value("string"))
        return features

    kwargs = dict(batched=True, batch_size=batch_size)
    if not isinstance(dataset, datasets.IterableDataset):
        kwargs.update(num_proc=num_proc, desc="robots.txt compliance")

    def annotate_split(split):
        if stale is not None and split.column_names is not None and stale in split.column_names:
            split = split.remove_columns([stale])
        elif stale is not None and split.column_names is None:  # an IterableDataset of unknown columns
            split = split.map(remove_columns=[stale])  # lazily; a row without the column is left as it is
        # Explicit features: a batch where no agent is disallowed would otherwise infer list<null>.
        features = with_new_columns(split.features)
        if isinstance(split, datasets.Dataset) and len(split) == 0:
            # `map` returns an empty dataset unchanged: add the (empty) columns with their features.
            names = [name for name in (column, agents_column) if name is not None]
            split = split.remove_columns([name for name in names if name in split.column_names])
            for name in names:
                split = split.add_column(name, [], feature=features[name])
            return split
        return split.map(annotate, features=features, **kwargs)

    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict({name: annotate_split(split) for name, split in dataset.items()})
    return annotate_split(dataset)


def filter_compliant(
    dataset,
    checker: RobotsCompliance,
    url_column: str = "url",
    batch_size: int = 1000,
    num_proc: int | None = None,
    column: str | None = "robots_compliant",
    agents_column: str | None = "disallowed_user_agents",
    mode: str = "fine",
    blocked_domains=None,
):
    """Drop every document whose URL is disallowed for any checked user agent (`mode="fine"`), or every document of a
    blocked domain (`mode="coarse"`).

    Fine mode (the default) decides each URL with `checker` (`RobotsCompliance.is_compliant`): a host that disallows
    only `/private/` loses only its `/private/...` documents. A kept row carries no opt-out from an earlier run (e.g.
    an `annotate_compliance` output re-filtered against a newer snapshot that lifted the opt-out): where the dataset
    has them, its `column` becomes `True` and its `agents_column` `[]`, what `annotate_compliance` gives for the row,
    as `RobotsTxtFilter` does for a kept document.

    Coarse mode (the data-compliance paper's domain-level filter) drops every document whose host is a blocked domain
    or a subdomain of one (`is_blocked_domain(url, blocked_domains, match_subdomains=True)`); the list is
    `blocked_domains`, default `build_blocked_domains(checker)`: the snapshot's hosts whose robots.txt closes the
    site (every path but perhaps the homepage, e.g. `Disallow: /`) for a checked agent (an unreachable one too under
    `status_policy="rfc9309"`). A host that disallows only some paths (or only the homepage) is kept whole; a
    listed host loses even the paths it allows. An empty, blank (only whitespace) or `None` URL follows
    `checker.missing_url`, as in the fine mode. `column` / `agents_column` are left as they are (they hold URL-level decisions, which
    this mode does not make).

    Args:
        dataset (`datasets.Dataset`, `IterableDataset` or `DatasetDict`): Documents with a URL column.
        checker (`RobotsCompliance`): The robots.txt decision maker.
        url_column (`str`, *optional*, defaults to `"url"`): Column holding each document's URL.
        batch_size (`int`, *optional*, defaults to 1000): Rows per `filter` batch.
        num_proc (`int`, *optional*): Worker processes for `Dataset.filter`.
        column (`str`, *optional*, defaults to `"robots_compliant"`): An earlier `annotate_compliance` boolean
            column, set to `True` on the kept rows where the dataset has it (`None`: left as it is).
        agents_column (`str`, *optional*, defaults to `"disallowed_user_agents"`): An earlier `annotate_compliance`
            list of disallowing agents, set to `[]` on the kept rows where the dataset has it (`None`: left as it is).
            `column` and `agents_column` must be two names other than `url_column` (or `None`).
        mode (`str`, *optional*, defaults to `"fine"`): `"fine"` (URL-level, `checker`'s decision per URL) or
            `"coarse"` (domain-level: every document of a blocked domain and its subdomains).
        blocked_domains (`BlockedDomains` or `Collection[str]`, *optional*): The coarse mode's list (e.g. a released
            blocked-domain list, or `build_blocked_domains(checker, registrable_domain=...)`); default:
            `build_blocked_domains(checker)`. Only with `mode="coarse"`.

    Returns:
        The compliant documents, in their original order.
    """
    if mode not in ("fine", "coarse"):
        raise ValueError(
            f"mode must be 'fine' (URL-level: each URL decided by its host's robots.txt) or 'coarse' (domain-level: "
            f"every document of a blocked domain dropped), got {mode!r}."
        )
    if blocked_domains is not None and mode != "coarse":
        raise ValueError(
            "blocked_domains is the coarse mode's list, which mode='fine' would ignore; pass mode='coarse' with it, "
            "or drop blocked_domains."
        )
    _check_inputs(dataset, checker, url_column, num_proc, batch_size)
    _check_column_names(url_column, column, agents_column, column_optional=True)

    if mode == "coarse":
        from .domains import BlockedDomains, _coarse_keeps, build_blocked_domains

        domains = build_blocked_domains(checker) if blocked_domains is None else BlockedDomains(blocked_domains)
        missing_kept = checker.missing_url == "keep"

        def keep(batch):
            return [_coarse_keeps(url, domains, missing_kept) for url in batch[url_column]]

    else:

        def keep(batch):
            return checker.is_compliant_batch(batch[url_column])

    kwargs = dict(batched=True, batch_size=batch_size)
    import datasets

    if not isinstance(dataset, datasets.IterableDataset):
        kwargs.update(num_proc=num_proc, desc="robots.txt filter")
    kept = dataset.filter(keep, **kwargs)
    if mode == "coarse":
        return kept
    if isinstance(kept, datasets.DatasetDict):
        return datasets.DatasetDict(
            {name: _clear_opt_out(split, column, agents_column, kwargs) for name, split in kept.items()}
        )
    return _clear_opt_out(kept, column, agents_column, kwargs)


def _clear_opt_out(split, column: str | None, agents_column: str | None, kwargs: dict):
    """Set `column` to `True` and `agents_column` to `[]` on every row of `split` that has them, with the features
    `annotate_compliance` gives them (an `IterableDataset` of unknown columns is checked row by row)."""
    import datasets

    types = {column: datasets.Value("bool"), agents_column: datasets.List(datasets.Value("string"))}
    types.pop(None, None)
    if split.column_names is not None:
        types = {name: feature for name, feature in types.items() if name in split.column_names}
    if not types or (isinstance(split, datasets.Dataset) and len(split) == 0):
        return split

    def clear(batch):
        rows = len(next(iter(batch.values())))
        out = {column: [True] * rows} if column in types and column in batch else {}
        if agents_column in types and agents_column in batch:
            out[agents_column] = [[] for _ in range(rows)]
        return out

    features = None if split.features is None else datasets.Features({**split.features, **types})
    if "desc" in kwargs:
        kwargs = {**kwargs, "desc": "robots.txt filter: clear earlier opt-out columns"}
    return split.map(clear, features=features, **kwargs)
