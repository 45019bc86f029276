"""Tokenize and pack text into fixed-length blocks for causal language modelling."""

from __future__ import annotations

from ..utils.checks import is_bool


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

    Documents are encoded with `split_special_tokens=True`: text that spells a special token (a literal `"<|eos|>"`)
    stays ordinary text, so only the EOS appended by `add_eos` separates documents.

    Args:
        dataset (`datasets.Dataset`): Dataset with a text column.
        tokenizer (`PreTrainedTokenizerBase`): Tokenizer; its `eos_token_id` separates documents when `add_eos`.
        block_size (`int`, *optional*, defaults to 256): Tokens per block (> 0).
        text_column (`str`, *optional*, defaults to `"text"`): Name of the column holding raw text.
        add_eos (`bool`, *optional*, defaults to `True`): Append EOS after every document (a bool: `"false"` is
            refused, not read as true).
        num_proc (`int`, *optional*): Worker processes for `Dataset.map`. Documents are packed per map batch of
            256 documents within each worker's shard, so the blocks depend on `num_proc`, and with `drop_remainder`
            also which tokens are dropped (each map batch drops its own remainder); without it the tokens do not.
        drop_remainder (`bool`, *optional*, defaults to `True`): Drop the final partial block of each map batch.
            With `False` that block is kept, shorter than `block_size` (it then needs a padding collator). A bool:
            `"false"` is refused, not read as true.

    Returns:
        `datasets.Dataset` with `input_ids`, `attention_mask` and `labels` (a copy of `input_ids`), of length
        `block_size` (see `drop_remainder`); other columns are removed.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:  # True is an int
        raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
    for name, value in (("add_eos", add_eos), ("drop_remainder", drop_remainder)):
        if not is_bool(value):  # a string such as "false" would be truthy and silently mean True
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    if text_column not in dataset.column_names:
        raise ValueError(
            f"text_column={text_column!r} is not a column of the dataset (columns: {dataset.column_names}); "
            "pass the name of the column holding the raw text (e.g. --text_column content)."
        )
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("add_eos=True needs a tokenizer with an eos_token; set tokenizer.eos_token or add_eos=False.")
    eos = tokenizer.eos_token_id

    def tokenize_and_group(batch):
        texts = batch[text_column]
        bad = next((t for t in texts if not isinstance(t, str)), texts)
        if bad is not texts:
            raise ValueError(
                f"text_column={text_column!r} holds a {type(bad).__name__} value ({bad!r:.60}) where text is expected "
                "(an empty CSV cell or a JSON null?); drop those rows or fill them with strings first."
            )
        # a document that spells "<|eos|>" stays text: only the EOS appended below marks a boundary
        ids = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        stream: list[int] = []
        for seq in ids:
            stream.extend(seq)
            if add_eos:
                stream.append(eos)
        n = (len(stream) // block_size) * block_size if drop_remainder else len(stream)
        blocks = [stream[i : i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": [list(b) for b in blocks]}

    packed = dataset.map(
        tokenize_and_group,
        batched=True,
        batch_size=256,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc=f"Packing into blocks of {block_size}",
    )
    if packed.num_rows == 0:  # no block formed: `map` hands back the input's columns (none for an empty input)
        import datasets

        # the types `map` stores for the blocks it forms
        dtypes = {"input_ids": "int32", "attention_mask": "int8", "labels": "int64"}
        features = datasets.Features({name: datasets.List(datasets.Value(dt)) for name, dt in dtypes.items()})
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    return packed
