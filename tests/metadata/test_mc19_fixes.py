"""Fixes of the mc19 metadata audit (findings 2-4; finding 1, the reproduction's speed-up control, is tested in
tests/test_reproduce_metadata_control.py).

2. `collator(ds[:n])` (a `datasets` slice: a dict of columns) failed with a raw `KeyError: 0`.
3. The exported `url_host` / `url_path` did not read bytes or `None` as the templates do: a raw `TypeError` ("a
   bytes-like object is required") for `url_host`, the bytes `b'/x'` from `url_path`.
4. `MetadataCollator(conditioning=False)` with `MetadataCooldownCallback` logged `metadata_conditioning: 1` for steps
   trained without metadata.
"""

import json
import os
import tempfile

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    InvalidMetadataError,
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataTrainer,
    metadata_template,
    url_host,
    url_path,
)

from .conftest import tiny_llama

# ---------------------------------------------------------------------------------------------------------------------
# 2. a dict of columns (or one row) is refused by name


def _rows(n=4):
    return [{"text": f"alpha beta {i}", "url": f"https://a{i}.org/x"} for i in range(n)]


@pytest.mark.parametrize("what", ["slice", "row"])
def test_a_column_dict_or_one_row_is_a_named_type_error(ctx_tokenizer, what):
    ds = Dataset.from_list(_rows())
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"))
    examples = ds[:4] if what == "slice" else ds[0]
    with pytest.raises(TypeError, match=r"list of rows.*\[ds\[i\] for i in range\(n\)\].*ds\.select\(range\(n\)\)"):
        collator(examples)
    assert collator.batches_seen == 0  # nothing collated, the cooldown counter untouched


def test_the_suggested_inputs_collate(ctx_tokenizer):
    ds = Dataset.from_list(_rows())
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0)
    by_rows = collator([ds[i] for i in range(4)])
    by_select = collator(ds.select(range(4)))
    assert torch.equal(by_rows["input_ids"], by_select["input_ids"])
    assert by_rows["input_ids"].shape[0] == 4


# ---------------------------------------------------------------------------------------------------------------------
# 3. url_host / url_path read their value as the templates do


@pytest.mark.parametrize("wrap", [bytes, bytearray])
def test_helpers_decode_bytes_as_the_templates(wrap):
    url = wrap(b" https://En.Wikipedia.org/wiki/Bern?a=1#H\n")
    assert url_host(url) == "en.wikipedia.org" == metadata_template("url_host")({"url": url})
    path = url_path(url)
    assert path == "/wiki/Bern?a=1#H" == metadata_template("url_path")({"url": url})
    assert isinstance(path, str)


@pytest.mark.parametrize("value", [None, "", "  \n", float("nan"), b"  "])
@pytest.mark.parametrize("helper, kind", [(url_host, "url_host"), (url_path, "url_path")])
def test_helpers_read_a_missing_value_as_no_metadata(helper, kind, value):
    assert helper(value) == "" == metadata_template(kind)({"url": value})


@pytest.mark.parametrize("value", [True, 3, 2.5, ["a.com"]])
@pytest.mark.parametrize("helper", [url_host, url_path])
def test_helpers_refuse_non_str_values_by_name(helper, value):
    with pytest.raises(InvalidMetadataError, match=rf"{helper.__name__}\(url\) needs a str \(or UTF-8 bytes\) URL"):
        helper(value)


@pytest.mark.parametrize("helper", [url_host, url_path])
def test_helpers_refuse_non_utf8_bytes_by_name(helper):
    with pytest.raises(InvalidMetadataError, match=rf"{helper.__name__}\(url\) got bytes that are not UTF-8"):
        helper(b"https://a.org/\xff")


def test_helpers_still_parse_str_urls():
    assert url_host("www.site.com/page") == "www.site.com"
    assert url_path("site.com:8080/x?q=1") == "/x?q=1"
    with pytest.raises(InvalidMetadataError, match="has no host"):
        url_host("/a/b")


# ---------------------------------------------------------------------------------------------------------------------
# 4. conditioning=False logs what it trains


@pytest.mark.parametrize("cls", [MetadataTrainer, Trainer])
def test_conditioning_false_logs_no_conditioning(ctx_tokenizer, cls):
    tok = ctx_tokenizer
    begin, end = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    collator = MetadataCollator(tok, metadata_template("url"), conditioning=False, metadata_dropout=0.0, max_length=32)
    model = tiny_llama(len(tok), hidden=32)
    carried = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        ids = kwargs["input_ids"]
        carried.append(bool(((ids[:, :-1] == begin) & (ids[:, 1:] != end)).any()))
        return forward(*args, **kwargs)

    model.forward = recording_forward
    out = tempfile.mkdtemp()
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=2, max_steps=4, report_to="none", save_strategy="steps",
        save_steps=2, logging_steps=1, use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.25)
    trainer = cls(model=model, args=args, train_dataset=Dataset.from_list(_rows(8)), data_collator=collator,
                  callbacks=[callback])  # fmt: skip
    trainer.train()
    assert carried == [False] * 4  # no batch carries metadata ...
    logged = [row["metadata_conditioning"] for row in trainer.state.log_history if "loss" in row]
    assert logged == [0, 0, 0, 0]  # ... and the logs say so (they said [1, 1, 1, 0])
    assert not any(callback.conditioning_at(step) for step in range(1, 5))
    with open(os.path.join(out, "checkpoint-2", "metadata_conditioning.json")) as f:
        assert json.load(f)["conditioning_next_step"] is False


def test_conditioning_true_still_logs_the_cooldown(ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0)
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.25)
    callback.switch_step = 3
    assert [callback.log_values(s)["metadata_conditioning"] for s in range(1, 5)] == [1, 1, 1, 0]
    collator.conditioning = False
    assert [callback.log_values(s)["metadata_conditioning"] for s in range(1, 5)] == [0, 0, 0, 0]
