"""Fixes of the md17 metadata audit.

1. A bytes URL value (an Arrow/parquet `binary` column) was trained as its repr: every `url_host` became `b'https:`;
   other non-str URL values (`True`, numbers) were str()-ed silently.
2. A `MetadataCooldownCallback` bound to another collator than the Trainer's applied no cooldown while
   `metadata_conditioning` logged it.
3. The GPT-2 per-prompt guidance path applied a `min_length` <= the padded width to each (shorter) prompt; a batched
   call, which the path mirrors, has it met by the padded width.
4. Guided generation took metadata verbatim: a blank string became a whitespace context never trained (blank values
   train as the empty context) and a URL with surrounding whitespace got other ids than training gave it.
5. A `max_metadata_tokens` cut inside a run of spaces decoded to text that re-encodes to other ids (the recipe's
   lm-eval prefix then differed from training).
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
    build_guidance_inputs,
    generate_with_metadata_guidance,
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


# ---------------------------------------------------------------------------------------------------------------------
# 3. min_length on the per-prompt (absolute positions) path


def _tiny_gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.3,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("where", ["kwarg", "generation_config", "model"])
def test_per_prompt_min_length_counts_over_the_padded_width(ctx_tokenizer, where):
    from transformers import GenerationConfig

    tok, model = ctx_tokenizer, _tiny_gpt2(ctx_tokenizer)
    prompts, meta = ["a", "alpha beta gamma delta epsilon"], [None, "https://en.wikipedia.org/wiki/Bern"]
    inputs = build_guidance_inputs(tok, prompts, meta)
    width = inputs["input_ids"].shape[1]
    assert inputs["attention_mask"][0].sum() < width - 4  # row 0 is the short prompt
    kw = dict(guidance_scale=2.0, do_sample=False, return_text=False, max_new_tokens=6)
    free = generate_with_metadata_guidance(model, tok, prompts, meta, **kw)
    stop = int(free[0, width])  # row 0's first guided token as EOS: row 0 ends at once when no minimum applies
    kw["eos_token_id"] = stop
    plain = generate_with_metadata_guidance(model, tok, prompts, meta, **kw)
    rest = plain.shape[1] - width - 1
    assert rest > 0 and plain[0, width:].tolist() == [stop] + [tok.pad_token_id] * rest  # row 1 runs on
    if where == "kwarg":
        kw["min_length"] = width
    elif where == "generation_config":
        kw["generation_config"] = GenerationConfig(min_length=width)
    else:
        model.generation_config.min_length = width
    # min_length = the padded width: met by every prompt of a batched call, so the same tokens as without it
    assert torch.equal(generate_with_metadata_guidance(model, tok, prompts, meta, **kw), plain)
    # above the padded width it counts new tokens from the padded width for every prompt
    kw.pop("generation_config", None)
    kw["min_length"] = width + 2
    longer = generate_with_metadata_guidance(model, tok, prompts, meta, **kw)
    assert stop not in longer[0, width : width + 2].tolist()


# ---------------------------------------------------------------------------------------------------------------------
# 4. generation reads metadata as training did


@pytest.mark.parametrize("layout", ["context", "meco"])
@pytest.mark.parametrize("raw", ["   ", "\n", " https://a.org/x\n", "\thttps://a.org/x  "])
def test_guidance_prefix_is_the_training_prefix_for_blank_and_padded_metadata(ctx_tokenizer, raw, layout):
    collator = MetadataCollator(
        ctx_tokenizer, metadata_template("url"), metadata_dropout=0.0, add_eos=False, layout=layout
    )
    trained = collator([{"text": "Hello", "url": raw}])["input_ids"][0].tolist()
    inputs = build_guidance_inputs(ctx_tokenizer, ["Hello", "Hello"], [raw, "x.org"], layout=layout)
    cond = inputs["input_ids"][0][inputs["attention_mask"][0] == 1].tolist()
    assert cond == trained
    if not raw.strip():  # blank: the empty context, the same as the unconditional prompt
        uncond = inputs["negative_prompt_ids"][0][inputs["negative_prompt_attention_mask"][0] == 1].tolist()
        assert cond == uncond
        assert torch.equal(
            inputs["input_ids"],
            build_guidance_inputs(ctx_tokenizer, ["Hello"] * 2, [None, "x.org"], layout=layout)["input_ids"],
        )


def test_guided_generation_conditions_on_the_stripped_metadata(ctx_tokenizer):
    model = tiny_llama(len(ctx_tokenizer))
    kw = dict(guidance_scale=2.0, do_sample=False, max_new_tokens=4, return_text=False)
    padded = generate_with_metadata_guidance(model, ctx_tokenizer, ["Hi", "Hello"], [" https://a.org/x\n", "  "], **kw)
    clean = generate_with_metadata_guidance(model, ctx_tokenizer, ["Hi", "Hello"], ["https://a.org/x", None], **kw)
    assert torch.equal(padded, clean)


# ---------------------------------------------------------------------------------------------------------------------
# 5. a cut re-encodes to the same ids


WHITESPACE_METADATA = ["News,   Blog", "https://a.org/x  y", "a  b   c    d     e", "Zürich  東京   x", "x \t\n  y"]


@pytest.mark.parametrize("meta", WHITESPACE_METADATA)
@pytest.mark.parametrize("layout", ["context", "meco"])
def test_every_cut_of_metadata_with_whitespace_runs_re_encodes_to_its_ids(ctx_tokenizer, meta, layout):
    from hf_ext.metadata import MetadataEncoder

    def decode(ids):
        return ctx_tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    full = MetadataEncoder(ctx_tokenizer, layout=layout).prefix_ids([meta])[0]
    for limit in range(3 if layout == "meco" else 1, len(full)):
        encoder = MetadataEncoder(ctx_tokenizer, layout=layout, max_metadata_tokens=limit)
        ids = encoder.prefix_ids([meta])[0]
        kept = ids[2:-1] if layout == "context" else ids[1:]
        assert 0 < len(kept) <= limit, limit
        assert ctx_tokenizer(decode(kept), add_special_tokens=False)["input_ids"] == kept, (limit, decode(kept))
        if layout == "context":
            assert meta.startswith(decode(kept)), limit


@pytest.mark.parametrize("meta, limit", [("News,   Blog", 7), ("https://a.org/x  y", 16)])
def test_the_recipe_lm_eval_prefix_is_the_training_prefix_after_a_cut_in_spaces(ctx_tokenizer, meta, limit):
    from types import SimpleNamespace

    from hf_ext.metadata import MetadataEncoder
    from hf_ext.recipes.metadata_pretrain import _prompt_prefixes

    trained = MetadataEncoder(ctx_tokenizer, max_metadata_tokens=limit).prefix_ids([meta])[0]
    args = SimpleNamespace(layout="context", max_metadata_tokens=limit, eval_url=None)
    prefix = _prompt_prefixes(ctx_tokenizer, metadata_template("column", column="title"), args)
    text = prefix[("url_conditioned", True)]({"title": meta})
    assert ctx_tokenizer.encode(text, add_special_tokens=False) == trained


def test_a_tokenizer_that_never_round_trips_keeps_the_whole_character_cut_and_warns_once(ctx_tokenizer, caplog):
    import logging

    from hf_ext.metadata import MetadataEncoder

    encoder = MetadataEncoder(ctx_tokenizer, max_metadata_tokens=5)
    full = encoder._tokens(["https://a.org/x"])[0]
    encoder._tokens = lambda texts: [[0] for _ in texts]  # decoded text never encodes back to the ids
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.encoding"):
        assert encoder._cut(full, 5) == full[:5]
        assert encoder._cut(full, 6) == full[:6]
    assert caplog.text.count("does not round-trip") == 1
