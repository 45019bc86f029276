"""Tokenize and pack text into fixed-length blocks for causal language modelling."""

from __future__ import annotations

from ..utils.checks import is_bool, is_int


def pack_dataset(
    dataset,
    tokenizer,
    block_size: int = 256,
    text_column: str = "text",
    add_eos: bool = True,
    num_proc: int | None = None,
    drop_remainder: bool = True,
):
    """Tokenize `dataset[text_column]`, join documents with EOS and cut the stream into `block_size` blocks.

    Block k holds tokens `[k * block_size, (k + 1) * block_size)` of the whole dataset's token stream (its documents
    in order, each followed by EOS): no token is dropped except the final partial block (see `drop_remainder`),
    whatever the number of documents, their lengths or `num_proc`.

    Takes a `datasets.Dataset` (packed now), a streaming `datasets.IterableDataset` (`load_dataset(...,
    streaming=True)`, `Dataset.to_iterable_dataset()`: packed lazily, as it is iterated, into the same blocks; the
    packed stream reads its source in order, as one shard, at the source's own epoch: `set_epoch` on the packed stream,
    which the `Trainer` calls every epoch, does not reach the source, so a shuffled source gives every epoch the same
    order; shuffle the packed stream instead, `packed.shuffle(seed=..., buffer_size=...)`) or a `DatasetDict` /
    `IterableDatasetDict` (what `load_dataset` returns: each split is packed alone).

    Documents are encoded with `split_special_tokens=True`: text that spells a special token (a literal `"<|eos|>"`)
    stays ordinary text, so only the EOS appended by `add_eos` separates documents.

    Args:
        dataset (`datasets.Dataset`, `datasets.IterableDataset`, `datasets.DatasetDict` or
            `datasets.IterableDatasetDict`): Documents in a text column.
        tokenizer (`PreTrainedTokenizerBase`): Tokenizer; its `eos_token_id` separates documents when `add_eos`.
        block_size (`int`, *optional*, defaults to 256): Tokens per block (> 0).
        text_column (`str`, *optional*, defaults to `"text"`): Name of the column holding raw text.
        add_eos (`bool`, *optional*, defaults to `True`): Append EOS after every document (a bool: `"false"` is
            refused, not read as true).
        num_proc (`int`, *optional*): Worker processes for `Dataset.map` (tokenizing, then cutting blocks); the
            blocks do not depend on it. Not for an `IterableDataset` (packed lazily in the process that iterates
            it): leave it None there.
        drop_remainder (`bool`, *optional*, defaults to `True`): Drop the final partial block (fewer than
            `block_size` tokens at the end of the stream). With `False` it is kept, shorter than `block_size` (it then
            needs a padding collator). A bool: `"false"` is refused, not read as true.

    Returns:
        The input's type (`Dataset`, `IterableDataset`, or a dict of them with the same splits) with `input_ids`,
        `attention_mask` and `labels` (a copy of `input_ids`), of length `block_size` (see `drop_remainder`); other
        columns are removed. A `Dataset` formatted with `with_format` (numpy, arrow, pandas, torch, ...) is packed
        into the same blocks as unformatted and returned in its format; one with a `with_transform` transform is refused
        (apply the transform with `map` first).
    """
    import itertools

    import datasets
    import numpy as np

    if not is_int(block_size) or block_size <= 0:  # True is an int; a numpy integer is one
        raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
    block_size = int(block_size)
    if num_proc is not None and (not is_int(num_proc) or num_proc < 0):  # 1.5 failed inside `map` naming no argument
        raise ValueError(f"num_proc must be None or a number of worker processes (an int >= 0), got {num_proc!r}.")
    num_proc = None if num_proc is None else int(num_proc)
    if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):  # None failed as an AttributeError
        raise TypeError(
            f"tokenizer must be a transformers tokenizer (e.g. hf_ext.data.build_tokenizer() or "
            f"AutoTokenizer.from_pretrained(...)), got {type(tokenizer).__name__}."
        )
    for name, value in (("add_eos", add_eos), ("drop_remainder", drop_remainder)):
        if not is_bool(value):  # a string such as "false" would be truthy and silently mean True
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        # every split is checked before any is packed: a missing text column is refused naming its split
        if not dataset:
            raise ValueError(f"pack_dataset got an empty {type(dataset).__name__} (no split to pack).")
        for name, split in dataset.items():
            if not isinstance(split, (datasets.Dataset, datasets.IterableDataset)):
                raise TypeError(f"Split {name!r} of the {type(dataset).__name__} is a {type(split).__name__}.")
            if isinstance(split, datasets.IterableDataset) and num_proc is not None:
                raise ValueError(_ITERABLE_NUM_PROC.format(num_proc=num_proc))
            _refuse_transform(split, f"split {name!r}")
            _check_text_column(_columns(split), text_column, f"split {name!r}")
        args = (tokenizer, block_size, text_column, add_eos, num_proc, drop_remainder)
        return type(dataset)({name: pack_dataset(split, *args) for name, split in dataset.items()})
    streaming = isinstance(dataset, datasets.IterableDataset)
    if not streaming and not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"pack_dataset takes a datasets.Dataset, IterableDataset, DatasetDict or IterableDatasetDict, got a "
            f"{type(dataset).__name__}; e.g. datasets.Dataset.from_dict({{{text_column!r}: texts}})."
        )
    if streaming and num_proc is not None:
        raise ValueError(_ITERABLE_NUM_PROC.format(num_proc=num_proc))
    _refuse_transform(dataset, "the dataset")
    columns = _columns(dataset)
    _check_text_column(columns, text_column, "the dataset")
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("add_eos=True needs a tokenizer with an eos_token; set tokenizer.eos_token or add_eos=False.")
    eos = tokenizer.eos_token_id

    def tokenize(texts) -> list:
        bad = next((t for t in texts if not isinstance(t, str)), texts)
        if bad is not texts:
            raise ValueError(
                f"text_column={text_column!r} holds a {type(bad).__name__} value ({bad!r:.60}) where text is expected "
                "(an empty CSV cell or a JSON null?); drop those rows or fill them with strings first."
            )
        # a document that spells "<|eos|>" stays text: only the EOS appended below marks a boundary
        ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [[*seq, eos] for seq in ids] if add_eos else ids

    def block_row(tokens) -> dict:
        return {
            "input_ids": tokens.astype(np.int32),
            "attention_mask": np.ones(len(tokens), dtype=np.int8),
            "labels": tokens.astype(np.int64),
        }

    # the types of the blocks formed
    dtypes = {"input_ids": "int32", "attention_mask": "int8", "labels": "int64"}
    features = datasets.Features({name: datasets.List(datasets.Value(dt)) for name, dt in dtypes.items()})
    # a formatted input ("numpy", "arrow", "pandas", ...) is read as Python objects, as the tokenizer takes them (a
    # numpy-formatted text column came as an array the tokenizer refused); a map-style result gets the input's format
    fmt = dataset.format if not streaming else None
    dataset = dataset.with_format(None)

    def formatted(result):
        return result.with_format(fmt["type"], **fmt["format_kwargs"]) if fmt and fmt["type"] else result

    if streaming:  # lazy: documents are read in batches of 256, the tokens past the last whole block carried over

        def blocks_of(source):
            carry = np.empty(0, dtype=np.int64)
            for batch in source.iter(batch_size=256):
                new = tokenize(batch[text_column])
                stream = np.concatenate([carry, np.fromiter(itertools.chain.from_iterable(new), dtype=np.int64)])
                full = len(stream) // block_size
                for row in stream[: full * block_size].reshape(full, block_size):
                    yield {name: value.tolist() for name, value in block_row(row).items()}
                carry = stream[full * block_size :]
            if len(carry) and not drop_remainder:
                yield {name: value.tolist() for name, value in block_row(carry).items()}

        return datasets.IterableDataset.from_generator(blocks_of, features=features, gen_kwargs={"source": dataset})

    if dataset.num_rows == 0:  # (`map` would hand an empty input back with its own columns)
        return formatted(datasets.Dataset.from_dict({name: [] for name in features}, features=features))

    def tokenize_documents(batch):
        ids = tokenize(batch[text_column])
        return {"ids": ids, "n": [len(seq) for seq in ids]}

    tokenized = dataset.map(
        tokenize_documents,
        batched=True,
        batch_size=256,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        features=datasets.Features({"ids": datasets.List(datasets.Value("int32")), "n": datasets.Value("int64")}),
        desc="Tokenizing",
    )
    # where each document starts in the concatenated token stream; block k is tokens [k * block_size, (k + 1) *
    # block_size) of that stream, formed by the map batch holding the document where it starts
    starts = np.zeros(tokenized.num_rows + 1, dtype=np.int64)
    np.cumsum(tokenized.data.column("n").to_numpy(), out=starts[1:])  # `map` wrote a new table: rows in order
    total = int(starts[-1])
    num_blocks = -(-total // block_size) if not drop_remainder else total // block_size
    if num_blocks == 0:
        return formatted(datasets.Dataset.from_dict({name: [] for name in features}, features=features))

    def cut_blocks(_lengths, indices):
        first_block = -(-int(starts[indices[0]]) // block_size)
        end_block = min(-(-int(starts[indices[-1] + 1]) // block_size), num_blocks)
        if first_block >= end_block:
            return {name: [] for name in features}
        begin, end = first_block * block_size, min(end_block * block_size, total)
        first_doc = int(np.searchsorted(starts, begin, side="right")) - 1
        last_doc = int(np.searchsorted(starts, end, side="left"))
        # the documents' token lists, read from the (memory-mapped) table: this closure holds the dataset, whose
        # pickle (to `num_proc` workers, and to fingerprint the map for the cache) names its files, not its tokens
        values = (
            tokenized.data.column("ids").slice(first_doc, last_doc - first_doc).combine_chunks().flatten().to_numpy()
        )
        stream = values.astype(np.int64)[begin - starts[first_doc] : end - starts[first_doc]]
        rows = [block_row(stream[i : i + block_size]) for i in range(0, len(stream), block_size)]
        return {name: [row[name] for row in rows] for name in features}

    blocks = tokenized.map(
        cut_blocks,
        batched=True,
        batch_size=256,
        with_indices=True,
        input_columns=["n"],
        num_proc=num_proc,
        remove_columns=tokenized.column_names,
        features=features,
        desc=f"Packing into blocks of {block_size}",
    )
    return formatted(blocks)


_ITERABLE_NUM_PROC = (
    "num_proc={num_proc} applies to a datasets.Dataset; a streaming IterableDataset is packed lazily, in the process "
    "that iterates it: leave num_proc None."
)


def _refuse_transform(dataset, what: str) -> None:
    """Refuse a `Dataset` with a `with_transform` / `set_transform` transform (format type "custom"): the text is
    read as stored, so the transform would be skipped, and handing it the blocks (written for the input's columns)
    failed at their first access (`KeyError: 'text'`)."""
    fmt = getattr(dataset, "format", None)
    if isinstance(fmt, dict) and fmt.get("type") == "custom":
        raise ValueError(
            f"pack_dataset got {what} with a with_transform / set_transform transform, which it would not apply to "
            "the text and which does not apply to the packed blocks; apply it first with "
            "`dataset.map(transform, batched=True)` (or drop it: `dataset.with_format(None)`)."
        )


def _check_text_column(columns: list[str] | None, text_column: str, what: str) -> None:
    """Refuse a `text_column` that is not in `columns` (a dataset's, when known: [`_columns`]), naming `what`."""
    if columns is not None and text_column not in columns:
        raise ValueError(
            f"text_column={text_column!r} is not a column of {what} (columns: {columns}); pass the name of the "
            "column holding the raw text (e.g. --text_column content)."
        )


def _columns(dataset) -> list[str] | None:
    """The columns of a `Dataset` / `IterableDataset`; those of a stream whose features are unknown (e.g. one built
    `IterableDataset.from_generator` without `features`) are read from its first row (None for an empty stream)."""
    columns = dataset.column_names
    if columns is None:
        first = next(iter(dataset.take(1)), None)
        return None if first is None else list(first)
    return list(columns)
