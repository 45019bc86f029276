"""Turn raw-text source and target datasets into packed blocks that keep their domain; pad target batches."""

from __future__ import annotations

MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


def ensure_lm_columns(dataset, add_labels: bool = True):
    """Add `labels` (a copy of `input_ids`; not with `add_labels=False`, for a collator that builds them, as
    `DataCollatorForLanguageModeling` does) and `attention_mask` (all ones) to a tokenized dataset lacking them. Where
    an `attention_mask` is given, `labels` (given or added) are -100 wherever it is 0, so padding stored in the rows
    is never a target, as in target batches. Rows whose `labels` or `attention_mask` length differs from their
    `input_ids` are refused."""
    ds = dataset
    has_labels = "labels" in ds.column_names
    if has_labels or "attention_mask" in ds.column_names:
        _check_row_lengths(ds, "the tokenized dataset")
    if "attention_mask" in ds.column_names and (add_labels or has_labels) and (not has_labels or _has_padding(ds)):
        labels = [
            [token if keep else -100 for token, keep in zip(row, mask)]
            for row, mask in zip(_column(ds, "labels" if has_labels else "input_ids"), _column(ds, "attention_mask"))
        ]
        ds = (ds.remove_columns("labels") if has_labels else ds).add_column("labels", labels)
    elif add_labels and not has_labels:
        ds = ds.add_column("labels", _column(ds, "input_ids"))
    if "attention_mask" not in ds.column_names:
        ds = ds.add_column("attention_mask", [[1] * len(x) for x in _column(ds, "input_ids")])
    return ds


def _column(dataset, name: str) -> list:
    """`dataset[name]` as a plain list, read in one batch: iterating the lazy `Column` that `datasets>=4` returns
    formats it row by row (~0.2-0.5 ms a row, seconds for the embedded corpus' blocks)."""
    return dataset.with_format(None)[name][:]


def _has_padding(dataset) -> bool:
    """Whether any `attention_mask` entry of `dataset` is 0 (given `labels` then need -100 there)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.list_flatten(dataset.with_format("arrow")["attention_mask"].combine_chunks())
    if pa.types.is_boolean(mask.type):  # True / False masks (pyarrow has no bool == int comparison)
        return bool(pc.any(pc.invert(mask)).as_py())
    return bool(pc.any(pc.equal(mask, 0)).as_py())


def _stream_needs_input_ids(domain: str | None, found: list[str]) -> str:
    where = f"train_dataset[{domain!r}]" if domain is not None else "a streamed training dataset"
    return (
        f"{where} has no input_ids (columns: {found}): the streaming path (a dict of IterableDatasets) takes "
        "tokenized streams and packs nothing (processing_class is not applied to them); tokenize each stream first, "
        "e.g. stream.map(lambda batch: tokenizer(batch['text']), batched=True, remove_columns=['text']), or pass a "
        "map-style datasets.Dataset with a domain column, whose raw text is packed."
    )


def _add_lm_fields(example: dict, domain: str | None = None) -> dict:
    out = {}
    if "input_ids" not in example:  # a stream whose columns were unknown at construction
        raise ValueError(_stream_needs_input_ids(domain, sorted(example)))
    ids = example["input_ids"]
    mask = example.get("attention_mask")
    for column in ("attention_mask", "labels"):
        row = example.get(column)
        if row is not None and len(row) != len(ids):
            raise ValueError(
                f"a streamed row's {column} has {len(row)} entries for {len(ids)} input_ids; a causal-LM row needs "
                f"one {column} entry per input token (use -100 in labels for tokens that should not count)."
            )
    labels = example.get("labels")
    if mask is not None:  # padding stored in the row is never a target (as in ensure_lm_columns), given labels or not
        out["labels"] = [token if keep else -100 for token, keep in zip(ids if labels is None else labels, mask)]
    elif "labels" not in example:
        out["labels"] = list(ids)
    if "attention_mask" not in example:
        out["attention_mask"] = [1] * len(ids)
    return out


def ensure_lm_stream(stream, domain: str | None = None):
    """Streaming counterpart of `ensure_lm_columns` (lazy `IterableDataset.map`). A stream whose columns are known
    (`column_names`) and lack `input_ids` is refused here, naming `domain`; one whose columns are unknown is refused at
    its first row without `input_ids` (it used to fail inside `datasets` with a bare `KeyError: 'input_ids'`)."""
    columns = getattr(stream, "column_names", None)
    if columns is not None and "input_ids" not in columns:
        raise ValueError(_stream_needs_input_ids(domain, list(columns)))
    return stream.map(_add_lm_fields, fn_kwargs={"domain": domain})


def check_token_types(dataset, what: str) -> None:
    """Refuse tokenized columns that do not hold integers: `input_ids` and `labels` (and an `attention_mask` of other
    than integers, bools or floats). Float ids (e.g. from a file written through pandas) passed construction: as sources they
    failed at the first step inside the embedding ("Expected tensor for argument #1 'indices' to have one of the
    following scalar types: Long, Int"), as targets they were cut to integers without a word (3.5 trained as 3);
    string or bool ids failed with a bare `ArrowNotImplementedError` naming no dataset."""
    import pyarrow as pa

    for column in MODEL_COLUMNS:
        if column not in dataset.column_names:
            continue
        kind = dataset.data.schema.field(column).type
        while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        if pa.types.is_null(kind) or pa.types.is_integer(kind):  # null: only empty rows (refused by name elsewhere)
            continue
        if column == "attention_mask":
            # a mask of bools or floats (1.0 / 0.0, as transformers' models take it) trained before this check; only
            # one of another type (strings, ...) is refused
            if pa.types.is_boolean(kind) or pa.types.is_floating(kind):
                continue
            raise ValueError(
                f"{what} has attention_mask of type {kind}, but an attention mask holds 1 (attend) or 0 (padding) as "
                "integers, bools or floats; cast the column, e.g. dataset.cast_column('attention_mask', "
                "datasets.Sequence(datasets.Value('int64'))), or drop it."
            )
        raise ValueError(
            f"{what} has {column} of type {kind}, but token ids{' and labels' if column == 'labels' else ''} are "
            f"integers; cast the column, e.g. dataset.cast_column({column!r}, datasets.Sequence(datasets.Value("
            "'int64'))), or pass the text untokenized."
        )


def check_no_empty_rows(dataset, what: str) -> None:
    """Refuse a tokenized dataset with an empty (or missing) `input_ids` row: a batch holding one fails deep in the
    collator or the embedding (e.g. "expected sequence of length 3 at dim 1 (got 0)") at the first step."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"])
    bad = pc.or_kleene(pc.is_null(lengths), pc.equal(lengths, 0))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise ValueError(
            f"{what} has rows with empty input_ids (the first at row {row}); drop them, e.g. "
            "dataset.filter(lambda r: len(r['input_ids']) > 0)."
        )


def domain_rows(dataset, domain_column: str) -> tuple[list[str], list[list[int]]]:
    """Sorted domain names of `dataset[domain_column]` and, for each, the rows holding it.

    Raises:
        ValueError: when the column is missing (the message names the available columns) or holds a null (it used to
            become a domain named "None").
    """
    if domain_column not in dataset.column_names:
        raise ValueError(
            f"the training dataset has no domain column {domain_column!r} (columns: {dataset.column_names}); add one "
            "naming each example's source domain, or pass --domain_column with the right name."
        )
    raw = _column(dataset, domain_column)
    nulls = [row for row, value in enumerate(raw) if value is None]
    if nulls:
        raise ValueError(
            f"the training dataset's domain column {domain_column!r} (--domain_column) is null in {len(nulls)} of "
            f"{len(raw)} rows, the first at row {nulls[0]} (an empty CSV cell or a JSON null?); give every row its "
            "source domain, or drop those rows."
        )
    values = [str(v) for v in raw]
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    rows: list[list[int]] = [[] for _ in names]
    for row, value in enumerate(values):
        rows[index[value]].append(row)
    return names, rows


def pack_by_domain(dataset, tokenizer, block_size: int, domain_column: str = "domain", text_column: str = "text"):
    """Pack each domain's documents separately into `block_size`-token blocks (no block mixes two domains).

    Args:
        dataset (`datasets.Dataset`): Raw text with a domain column.
        tokenizer (`PreTrainedTokenizerBase`): Tokenizer with an EOS token (documents are joined with EOS).
        block_size (`int`): Tokens per block.
        domain_column (`str`, *optional*, defaults to `"domain"`): Column naming the domain.
        text_column (`str`, *optional*, defaults to `"text"`): Column holding the text.

    Returns:
        `datasets.Dataset` with `input_ids`, `attention_mask`, `labels` and `domain_column`.
    """
    from datasets import concatenate_datasets

    from ..data import pack_dataset

    names, rows = domain_rows(dataset, domain_column)
    if text_column not in dataset.column_names:
        raise ValueError(
            f"the training dataset has neither `input_ids` nor the text column {text_column!r} (columns: "
            f"{dataset.column_names}); pass --text_column or a tokenized dataset."
        )
    parts = []
    for name, ix in zip(names, rows):
        packed = pack_dataset(dataset.select(ix), tokenizer, block_size, text_column)
        if len(packed) == 0:
            raise ValueError(
                f"domain {name!r} has too little text for one block of {block_size} tokens; lower --block_size or "
                "drop the domain."
            )
        parts.append(packed.add_column(domain_column, [name] * len(packed)))
    return concatenate_datasets(parts)


def _check_row_lengths(dataset, what: str) -> None:
    """Refuse tokenized rows whose `labels` / `attention_mask` do not have the length of their `input_ids` (they
    cannot be padded together; e.g. labels of a sequence-to-sequence dataset)."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    lengths = pc.list_value_length(table["input_ids"])
    for column in ("labels", "attention_mask"):
        if column not in dataset.column_names:
            continue
        bad = pc.invert(pc.fill_null(pc.equal(pc.list_value_length(table[column]), lengths), False))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise ValueError(
                f"{what} has rows whose {column} length differs from their input_ids length (the first at row {row}); "
                f"a causal-LM target needs one {column} entry per input token (use -100 in labels for tokens that "
                "should not count)."
            )


def _labelled_rows(dataset):
    """Boolean numpy array: whether each row has a labelled next-token position (a `labels` entry other than -100 with
    `attention_mask` 1, after the first token, which the causal shift drops). A dataset without `labels` (a collator
    builds them from `input_ids`) is read with `labels = input_ids`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    labels = pc.list_slice(table["labels" if "labels" in dataset.column_names else "input_ids"].combine_chunks(), 1)
    mask = pc.list_flatten(pc.list_slice(table["attention_mask"].combine_chunks(), 1))
    if not pa.types.is_boolean(mask.type):  # True / False masks (pyarrow has no bool == int comparison)
        mask = pc.equal(mask, 1)
    counted = pc.and_(pc.not_equal(pc.list_flatten(labels), -100), mask)
    labelled = np.zeros(len(dataset), dtype=bool)
    labelled[pc.unique(pc.filter(pc.list_parent_indices(labels), pc.fill_null(counted, False))).to_numpy()] = True
    return labelled


def reweighting_rows(dataset, rows: list[list[int]]) -> list:
    """For each domain's `rows` of a source `dataset` (tokenized, with an `attention_mask`), those with a labelled next
    token: the rows the reweighting minibatches are drawn from. A row without one has no loss, so a minibatch made of
    such rows only had a NaN loss and a zero gradient, which GRAPE and DoGE scored 0 (DoReMi an excess loss of 0) at
    that update, as if the domain neither helped the targets nor lagged its reference. A domain none of whose rows has
    a labelled token keeps all its rows (the trainer refuses it where the dataset has `labels`)."""
    import numpy as np

    labelled = _labelled_rows(dataset)
    kept = []
    for ix in rows:
        ix = np.asarray(ix, dtype=np.int64)
        own = ix[labelled[ix]]
        kept.append(own if own.size else ix)
    return kept


def has_labelled_token(example: dict) -> bool:
    """Whether a streamed source `example` (with `labels` and `attention_mask`, as `ensure_lm_stream` gives it) has a
    labelled next-token position (the streaming counterpart of `reweighting_rows`)."""
    labels = example.get("labels")
    labels = example["input_ids"] if labels is None else labels
    mask = example.get("attention_mask")
    mask = [1] * len(labels) if mask is None else mask
    return any(label != -100 and keep for label, keep in zip(labels[1:], mask[1:]))


def _check_labelled_rows(dataset, what: str) -> None:
    """Refuse target rows without a labelled next-token position (every `labels` entry after the first -100 or
    masked, or a one-token row): such a row has no loss (the causal shift drops the first token), so a reweighting
    sample made of them has a NaN loss and a zero gradient, which GRAPE reads as a task that does not improve (its
    weight rose at every update; `grape_ema` failed on a NaN score)."""
    import numpy as np

    labelled = _labelled_rows(dataset)
    if not labelled.all():
        bad = np.flatnonzero(~labelled)
        raise ValueError(
            f"{what} has {bad.size} of {len(dataset)} rows without a labelled next token (the first at row "
            f"{int(bad[0])}): their labels are -100 (or masked) after the first token, or they hold one token, so they "
            "have no loss to reweight by; drop them (e.g. dataset.filter(lambda r: any(l != -100 for l in "
            "r['labels'][1:])) or fix the labels."
        )


def check_labelled_domains(dataset, names: list[str], rows: list[list[int]]) -> None:
    """Refuse source domains none of whose rows (`rows[k]` of `dataset`, which has `labels` and `attention_mask`) has a
    labelled next token. Such a domain has no training loss; at each update its minibatch loss was NaN and its
    gradient zero, so GRAPE and DoGE scored it 0 (DoReMi an excess loss of 0) and kept sampling it, logging NaN."""
    labelled = _labelled_rows(dataset)
    empty = [name for name, ix in zip(names, rows) if not labelled[ix].any()]
    if empty:
        raise ValueError(
            f"train_dataset: the source domains {empty} have no labelled token: in every one of their rows the labels "
            "are -100 (or masked) after the first token, or the row holds one token, so the domain has no loss to "
            "train on or reweight by. Fix their labels (e.g. labels = input_ids for plain text), or drop the domain "
            "from train_dataset."
        )


def check_token_ids(dataset, vocab_size: int, what: str) -> None:
    """Refuse `input_ids` (and `labels` other than -100) outside `[0, vocab_size)`: the model's embedding (and loss)
    cannot index them. A target tokenized with another tokenizer used to pass construction and fail with a bare
    `IndexError` (on CUDA a device-side assert) at the first task update, `reweight_tasks_every` steps later."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    for column in ("input_ids", "labels"):
        if column not in dataset.column_names:
            continue
        values = pc.list_flatten(table[column].combine_chunks())
        if column == "labels":
            values = pc.filter(values, pc.not_equal(values, -100))
        if len(values) == 0:
            continue
        low, high = (v.as_py() for v in pc.min_max(values).values())
        if low is None:
            continue
        bad = high if high >= vocab_size else (low if low < 0 else None)
        if bad is not None:
            raise ValueError(
                f"{what} has the token id {bad} in its {column}, but the model's vocabulary has {vocab_size} tokens "
                f"(ids 0..{vocab_size - 1}): was it tokenized with another tokenizer? Tokenize it with the model's "
                "tokenizer (or pass it as raw text with processing_class=<that tokenizer>)."
            )


def check_row_lengths(dataset, max_positions: int, what: str) -> None:
    """Refuse rows of `input_ids` longer than the `max_positions` of the model's learned position table (GPT-2's
    `n_positions`): its position embedding cannot index them. Such a target used to pass construction and fail with a
    bare `IndexError` at the first task update, `reweight_tasks_every` steps later."""
    import pyarrow.compute as pc

    if "input_ids" not in dataset.column_names or len(dataset) == 0:
        return
    lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"].combine_chunks())
    longest = pc.max(lengths).as_py()
    if longest is not None and longest > max_positions:
        row = pc.index(lengths, longest).as_py()
        raise ValueError(
            f"{what} has a row of {longest} tokens (row {row}), but the model's position embedding holds "
            f"{max_positions} positions: truncate or split its rows to at most {max_positions} tokens (or pass it as "
            f"raw text with processing_class=<tokenizer> and block_size <= {max_positions})."
        )


def pad_target_features(features: list[dict], pad_token_id: int) -> dict:
    """Collate target-task examples of any lengths into one right-padded causal-LM batch.

    `input_ids` are padded with `pad_token_id`, `attention_mask` with 0 and `labels` with -100, and a position whose
    `attention_mask` is 0 (padding already in the data) never counts in the loss either, so the model's mean loss on
    the batch is the token-weighted mean over the real tokens, the same for any padding. `labels` default to the
    `input_ids`, `attention_mask` to ones. Right padding keeps every real token at the position it has alone.

    Returns:
        `dict` of `torch.long` tensors `input_ids`, `attention_mask`, `labels`, shape `(len(features), max length)`.
    """
    import numbers

    import torch

    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, numbers.Integral) or pad_token_id < 0:
        # -1 was taken (no embedding row has it) and 2.7 became 2 without a word
        raise ValueError(
            f"pad_token_id must be a non-negative int (a token id of the vocabulary, e.g. tokenizer.pad_token_id or "
            f"eos_token_id), got {pad_token_id!r}."
        )
    length = max(len(f["input_ids"]) for f in features)
    shape = (len(features), length)
    input_ids = torch.full(shape, int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    for i, f in enumerate(features):
        ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
        n = ids.numel()
        input_ids[i, :n] = ids
        mask = f.get("attention_mask")
        attention_mask[i, :n] = 1 if mask is None else torch.as_tensor(mask, dtype=torch.long)
        labels[i, :n] = ids if f.get("labels") is None else torch.as_tensor(f["labels"], dtype=torch.long)
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def prepare_target(name: str, dataset, tokenizer, block_size: int, text_column: str = "text"):
    """Return the target task `name` as rows of `input_ids`, `attention_mask`, `labels`.

    A dataset that already has `input_ids` is used as is, one example per row (rows may differ in length, e.g. one
    question + answer each; the trainer pads them with `pad_target_features`); `labels` default to `input_ids` and
    `attention_mask` to ones. Otherwise its `text_column` is packed with `tokenizer` into `block_size`-token blocks.
    """
    from datasets import Dataset

    from ..data import pack_dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(f"target_datasets[{name!r}] must be a datasets.Dataset, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError(
            f"target_datasets[{name!r}] has no rows (an empty datasets.Dataset); pass at least one example (check "
            "the filter or the file that built it), or drop the task."
        )
    if "input_ids" in dataset.column_names:
        check_token_types(dataset, f"target_datasets[{name!r}]")
        check_no_empty_rows(dataset, f"target_datasets[{name!r}]")
        _check_row_lengths(dataset, f"target_datasets[{name!r}]")
        ds = ensure_lm_columns(dataset)
        _check_labelled_rows(ds, f"target_datasets[{name!r}]")
    else:
        if text_column not in dataset.column_names:
            raise ValueError(
                f"target_datasets[{name!r}] has no text column {text_column!r} and no input_ids (columns: "
                f"{dataset.column_names}); give each target task a text column (or pass --text_column) or tokenize it."
            )
        if tokenizer is None:
            raise ValueError(f"target_datasets[{name!r}] is raw text; pass processing_class=<tokenizer> to pack it.")
        ds = pack_dataset(dataset, tokenizer, block_size, text_column)
        if len(ds) == 0:
            raise ValueError(
                f"the text of target_datasets[{name!r}] ({len(dataset)} rows) yields no packed block of {block_size} "
                "tokens; lower --block_size, add text, or pass the task tokenized (input_ids rows of any length)."
            )
    return ds.select_columns(list(MODEL_COLUMNS))
