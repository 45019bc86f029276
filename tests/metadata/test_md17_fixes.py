"""Fixes of the md17 metadata audit.

1. A bytes URL value (an Arrow/parquet `binary` column) was trained as its repr: every `url_host` became `b'https:`;
   other non-str URL values (`True`, numbers) were str()-ed silently.
2. A `MetadataCooldownCallback` bound to another collator than the Trainer's applied no cooldown while
   `metadata_conditioning` logged it.
"""

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
)

from .conftest import tiny_llama

# ---------------------------------------------------------------------------------------------------------------------
# 1. bytes and other non-str values


@pytest.mark.parametrize(
    "kind, expected",
    [("url", "https://en.wikipedia.org/wiki/Bern"), ("url_host", "en.wikipedia.org"), ("url_path", "/wiki/Bern")],
)
@pytest.mark.parametrize("wrap", [bytes, bytearray])
def test_bytes_url_is_decoded(kind, expected, wrap):
    template = metadata_template(kind)
    assert template({"url": wrap(b" https://en.wikipedia.org/wiki/Bern\n")}) == expected
    assert template({"url": wrap(b"  ")}) == ""  # blank bytes are missing, as a blank str


def test_bytes_are_decoded_in_every_kind():
    assert metadata_template("column", column="src")({"src": "Zürich".encode()}) == "Zürich"
    assert metadata_template("topic_format")({"topic": b"Science", "format": b"Tutorial"}) == "Science, Tutorial"
    assert metadata_template("format", fmt="{src} | {url}")({"src": b"wiki", "url": b"a.org"}) == "wiki | a.org"


@pytest.mark.parametrize("value", [b"https://a.org/\xff\xfe", True, 3, 2.5, ["a.com"]])
@pytest.mark.parametrize("kind", ["url", "url_host", "url_path"])
def test_non_utf8_bytes_and_non_str_urls_are_invalid(kind, value):
    with pytest.raises(InvalidMetadataError, match="column 'url'"):
        metadata_template(kind)({"url": value})


def test_collator_trains_bytes_urls_with_their_host_and_counts_bad_ones(ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0)
    rows = [{"text": "First doc.", "url": b"https://en.wikipedia.org/wiki/Bern"},
            {"text": "Second doc.", "url": b"https://www.bbc.co.uk/\xff"},
            {"text": "Third doc.", "url": True}]  # fmt: skip
    batch = collator(rows)
    decoded = [ctx_tokenizer.decode(r, skip_special_tokens=False) for r in batch["input_ids"]]
    assert decoded[0].startswith(f"<|bos|>{CONTEXT_BEGIN}en.wikipedia.org{CONTEXT_END}First doc.")
    missing = collator([rows[0], {"text": "Second doc.", "url": None}, {"text": "Third doc.", "url": None}])
    assert torch.equal(batch["input_ids"], missing["input_ids"])  # the bad ones trained without metadata
    assert collator.invalid_metadata == 2


# ---------------------------------------------------------------------------------------------------------------------
# 2. the callback's collator is the one that trains


def _cooldown_trainer(tok, data_collator, callback_collator, cls=MetadataTrainer, **extra):
    rows = [{"text": f"doc {i} words here", "url": f"site{i % 3}.com/p{i}"} for i in range(16)]
    extra = {"remove_unused_columns": False, **extra}
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=2, max_steps=8, report_to="none",
        save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return cls(
        model=tiny_llama(len(tok), hidden=32), args=args, train_dataset=Dataset.from_list(rows),
        data_collator=data_collator, callbacks=[MetadataCooldownCallback(callback_collator, cooldown_fraction=0.5)],
    )  # fmt: skip


def _collator(tok):
    return MetadataCollator(tok, metadata_template("url"), metadata_dropout=0.0, max_length=32)


@pytest.mark.parametrize("cls", [MetadataTrainer, Trainer])
def test_a_callback_bound_to_another_collator_is_refused_before_training(ctx_tokenizer, cls):
    trainer = _cooldown_trainer(ctx_tokenizer, _collator(ctx_tokenizer), _collator(ctx_tokenizer), cls=cls)
    with pytest.raises(ValueError, match=r"MetadataCooldownCallback\(collator=\.\.\.\) got another MetadataCollator"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_wrapped_collator_is_found_through_remove_columns_and_partial(ctx_tokenizer):
    import functools

    from transformers.trainer_utils import RemoveColumnsCollator

    collator = _collator(ctx_tokenizer)
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.5)

    def loader(collate):  # as Trainer wraps its data_collator with remove_unused_columns=True
        return torch.utils.data.DataLoader([], collate_fn=RemoveColumnsCollator(collate, ["input_ids"]))

    callback._check_training_collator(loader(functools.partial(collator)))
    assert not callback._loader_collator_unknown
    with pytest.raises(ValueError, match="got another MetadataCollator"):
        callback._check_training_collator(loader(functools.partial(_collator(ctx_tokenizer))))
    callback._check_training_collator(loader(lambda examples: collator(examples)))
    assert callback._loader_collator_unknown  # checked at the first step's end instead


def test_a_hidden_other_collator_is_refused_at_the_first_step(ctx_tokenizer):
    other = _collator(ctx_tokenizer)
    train = _collator(ctx_tokenizer)
    trainer = _cooldown_trainer(ctx_tokenizer, lambda examples: train(examples), other)
    with pytest.raises(ValueError, match=r"built no batch in optimizer step 1.*collator=trainer_collator"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_the_right_collator_cools_down_also_behind_a_wrapper_of_ones_own(ctx_tokenizer):
    collator = _collator(ctx_tokenizer)
    end = ctx_tokenizer.convert_tokens_to_ids(CONTEXT_END)
    trainer = _cooldown_trainer(ctx_tokenizer, lambda examples: collator(examples), collator)
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(int((kw["input_ids"][:, 2] != end).any())) if m.training else None,
        with_kwargs=True,
    )
    trainer.train()
    assert seen == [1, 1, 1, 1, 0, 0, 0, 0]
    assert [h["metadata_conditioning"] for h in trainer.state.log_history if "loss" in h] == seen
