"""Audit md14 fixes: evaluation with the training collator across the cooldown, missing (NaN / pandas) metadata,
`--max_metadata_tokens None`, character-boundary metadata cuts, argument checks of the public helpers, and the meco
layout's default template."""

import copy
import json
import logging
import math

import datasets
import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataEncoder,
    MetadataTrainer,
    add_context_tokens,
    build_guidance_inputs,
    keeps_metadata,
    metadata_template,
)
from hf_ext.recipes._common import parse_recipe_args
from hf_ext.recipes.metadata_pretrain import (
    MetadataArguments,
    MetadataDataArguments,
    MetadataModelArguments,
    MetadataTrainingArguments,
    _prompt_prefixes,
    _template,
    validate_args,
)

from .conftest import tiny_llama

RECIPE_TYPES = (MetadataModelArguments, MetadataDataArguments, MetadataArguments, MetadataTrainingArguments)


# ------------------------------------------------------------------------- 1. evaluation with the training collator
def _recording_collator(tok):
    """A collator that records, per batch, whether it was a training or an evaluation batch and had metadata."""
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])

    class Recording(MetadataCollator):
        def __call__(self, examples):
            batch = super().__call__(examples)
            row = batch["input_ids"][0].tolist()
            with_meta = row.index(ce) - row.index(cb) > 1
            self.calls.append(("eval" if examples[0]["text"].startswith("held") else "train", with_meta))
            return batch

    collator = Recording(tok, metadata_template("url_host"), metadata_dropout=0.0, padding_side="right")
    collator.calls = []
    return collator


def _run(tok, out, cls=MetadataTrainer, resume=None, eval_on_start=True, grad_accum=1):
    train = datasets.Dataset.from_list([{"text": f"training document {i}", "url": f"https://h{i}.org/x"} for i in range(40)])
    evald = datasets.Dataset.from_list([{"text": f"held-out document {i}", "url": f"https://e{i}.org/y"} for i in range(6)])
    collator = _recording_collator(tok)
    args = TrainingArguments(
        str(out), per_device_train_batch_size=2, gradient_accumulation_steps=grad_accum, max_steps=10,
        per_device_eval_batch_size=1, eval_strategy="steps", eval_steps=2, eval_on_start=eval_on_start,
        logging_steps=1, report_to="none", remove_unused_columns=False, disable_tqdm=True, use_cpu=True,
        save_strategy="steps", save_steps=2, learning_rate=1e-3, seed=0, data_seed=0,
    )  # fmt: skip
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.5)  # steps 1-5 with metadata, 6-10 without
    trainer = cls(model=tiny_llama(len(tok), hidden=32), args=args, train_dataset=train, eval_dataset=evald,
                  data_collator=collator, callbacks=[callback])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    evals, current = [], None  # the batches of each evaluation, in order
    for kind, with_meta in collator.calls:
        if kind == "eval":
            if current is None:
                current = []
                evals.append(current)
            current.append(with_meta)
        else:
            current = None
    rows = [e for e in trainer.state.log_history if "eval_loss" in e]
    training = [with_meta for kind, with_meta in collator.calls if kind == "train"]
    return rows, evals, training, callback


def test_metadata_trainer_evaluates_with_the_conditioning_of_the_step(ctx_tokenizer, tmp_path):
    """Each evaluation batch is built as the model is trained at that step, and the row logs that (was: the eval batches
    read and advanced the training counter, which already counted the next step's batch: the evaluation at step 2 was
    [1, 1, 0, 0, 0, 0] with metadata, at step 4 all without, both logged as metadata_conditioning=1)."""
    rows, evals, training, callback = _run(ctx_tokenizer, tmp_path)
    assert callback.switch_step == 5
    assert [(r["step"], r["metadata_conditioning"]) for r in rows] == [
        (0, 1), (2, 1), (4, 1), (6, 0), (8, 0), (10, 0)
    ]  # fmt: skip
    assert len(evals) == len(rows)
    for row, built in zip(rows, evals):
        assert built == [bool(row["metadata_conditioning"])] * 6, (row["step"], built)
    # the training switch is untouched: steps 1-5 with metadata, the rest (and any batch prepared ahead) without
    assert training[:10] == [True] * 5 + [False] * 5 and not any(training[10:])


def test_resumed_run_evaluates_and_switches_as_the_uninterrupted_one(ctx_tokenizer, tmp_path):
    full_rows, full_evals, full_training, _ = _run(ctx_tokenizer, tmp_path, grad_accum=2, eval_on_start=False)
    rows, evals, training, _ = _run(
        ctx_tokenizer, tmp_path, grad_accum=2, eval_on_start=False, resume=str(tmp_path / "checkpoint-2")
    )
    after = [r for r in full_rows if r["step"] > 2]
    rows = [r for r in rows if r["step"] > 2]  # the rows up to the checkpoint come back with its trainer state
    assert len(evals) == len(rows) == 4  # steps 4 (conditioned phase), 6, 8, 10
    assert [(r["step"], r["metadata_conditioning"]) for r in rows] == [(r["step"], r["metadata_conditioning"]) for r in after]
    assert [r["eval_loss"] for r in rows] == pytest.approx([r["eval_loss"] for r in after], rel=1e-5)
    assert evals == full_evals[-len(evals) :]
    for row, built in zip(rows, evals):
        assert built == [bool(row["metadata_conditioning"])] * 6, (row["step"], built)
    assert training[:16] == full_training[4:20]  # micro-batches of steps 3-10: 3-5 with metadata, 6-10 without
    assert full_training[:20] == [True] * 10 + [False] * 10


def test_a_plain_trainer_evaluating_with_the_training_counter_is_warned(ctx_tokenizer, tmp_path, caplog):
    """A plain Trainer has no hook before evaluation: the callback keeps the switch exact and says which evaluation
    batches got the wrong conditioning (was: silent)."""
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.callbacks"):
        rows, evals, training, _ = _run(ctx_tokenizer, tmp_path, cls=Trainer, eval_on_start=False)
    assert training[:10] == [True] * 5 + [False] * 5
    assert evals[0] == [True, True, False, False, False, False]  # step 2, conditioned phase: built from the counter
    messages = [r.getMessage() for r in caplog.records if "evaluation batches were built" in r.getMessage()]
    assert any("4 of 6 evaluation batches were built without metadata at step 2" in m for m in messages), messages
    assert any("6 of 6 evaluation batches were built without metadata at step 4" in m for m in messages), messages
    assert not any("at step 6" in m or "at step 8" in m for m in messages)  # after the switch both agree


def test_collator_evaluation_mode_neither_reads_nor_moves_the_training_counter(ctx_tokenizer):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0)
    collator.cooldown_start_batch = 1
    collator.invalid_by_batch = {}
    good, bad = {"text": "doc", "url": "https://a.org/x"}, {"text": "doc", "url": "http://[::1/x"}
    cb, ce = ctx_tokenizer.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])

    def has_meta(batch):
        row = batch["input_ids"][0].tolist()
        return row.index(ce) - row.index(cb) > 1

    assert has_meta(collator([good])) and collator.batches_seen == 1  # training batch 0: before the switch
    with collator.evaluating(True):
        assert has_meta(collator([good, bad])) and has_meta(collator([good]))
    assert collator.batches_seen == 1 and collator.invalid_by_batch == {} and collator.invalid_metadata == 1
    assert not has_meta(collator([good])) and collator.batches_seen == 2  # training batch 1: the cooldown
    with collator.evaluating(True):
        assert has_meta(collator([good]))
    with collator.evaluating(False):
        assert not has_meta(collator([good]))
    assert collator.batches_seen == 2
    collator.conditioning = False
    with collator.evaluating(True):  # a collator without conditioning never adds metadata
        assert not has_meta(collator([good]))
    with pytest.raises(TypeError, match="conditioning must be True or False"):
        with collator.evaluating("yes"):
            pass


# ------------------------------------------------------------------------------- 2. missing values: NaN, NA, NaT
def _missing_values():
    """The values pandas, numpy and JSON use for a missing cell (`None` was always missing)."""
    values = [float("nan"), np.nan, np.float32("nan"), np.datetime64("NaT")]
    try:
        import pandas as pd
    except ImportError:
        return values
    return [*values, pd.NA, pd.NaT]


@pytest.mark.parametrize("missing", _missing_values(), ids=repr)
@pytest.mark.parametrize("kind", ["url", "url_host", "topic_format", "quality_score", "column"])
def test_nan_and_pandas_missing_values_are_no_metadata(kind, missing):
    column = {"topic_format": None, "column": "source"}.get(kind)
    template = metadata_template(kind, column=column)
    row = {c: missing for c in template.columns}
    assert template(row) == ""
    if len(template.columns) == 2:  # one of two missing is no metadata too, as with None
        assert template({**row, template.columns[1]: "Tutorial"}) == ""


@pytest.mark.parametrize("missing", [None, *_missing_values()], ids=repr)
def test_format_template_with_every_field_missing_gives_no_context(missing):
    template = metadata_template("format", fmt="{source} | {url}")
    assert template({"source": missing, "url": missing}) == ""  # was " | ", a context for a row without metadata
    assert template({"source": missing, "url": "u"}) == "| u"  # stripped, as guided generation reads it (md35)


def test_pandas_rows_with_a_missing_url_train_without_metadata(ctx_tokenizer):
    pd = pytest.importorskip("pandas")
    rows = pd.DataFrame({"text": ["first doc", "second doc"], "url": ["https://a.org/x", None]}).to_dict("records")
    assert math.isnan(rows[1]["url"])
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0)
    batch = collator(rows)
    reference = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0)(
        [rows[0], {"text": "second doc", "url": None}]
    )
    assert torch.equal(batch["input_ids"], reference["input_ids"])  # was <|context_begin|>nan<|context_end|>
    assert collator.invalid_metadata == 0
    assert metadata_template("url_host")(json.loads('{"url": NaN}')) == ""
    assert metadata_template("url_path")(rows[1]) == ""


# --------------------------------------------------------------------------------- 3. --max_metadata_tokens None
@pytest.mark.parametrize("spelling", ["None", "none", "NONE"])
def test_max_metadata_tokens_none_means_no_limit(spelling, tmp_path):
    argv = ["--max_metadata_tokens", spelling, "--output_dir", str(tmp_path / "out")]
    parsed = parse_recipe_args(RECIPE_TYPES, argv, resume="keep")
    assert parsed[2].max_metadata_tokens is None
    validate_args(*parsed)  # the documented no-limit mode is reachable
    with pytest.raises(SystemExit):  # anything else still has to be an int
        parse_recipe_args(RECIPE_TYPES, ["--max_metadata_tokens", "lots", "--output_dir", str(tmp_path)], resume="keep")


def test_optional_numeric_flags_of_every_recipe_read_none(tmp_path):
    from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments

    types = (ModelArguments, DataArguments, PretrainTrainingArguments)
    parsed = parse_recipe_args(types, ["--max_eval_blocks", "none", "--output_dir", str(tmp_path)], resume="keep")
    assert parsed[1].max_eval_blocks is None
    assert parse_recipe_args(types, ["--output_dir", str(tmp_path)], resume="keep")[1].max_eval_blocks == 256


# ------------------------------------------------------------------------ 4. metadata cut on character boundaries
URLS = [
    "https://ja.wikipedia.org/wiki/東京都の歴史と文化についての概要と詳細な説明ページ",
    "https://ja.wikipedia.org/wiki/x東京都の歴史と文化についての概要と詳細な説明ページ",
    "https://de.wikipedia.org/wiki/Zürich_Übersicht_Straßenbahn_Größe_Öffnungszeiten_Bahnhöfe_Gebäude",
]


@pytest.fixture(scope="module")
def recipe_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)  # the session's tokenizer stays without the context tokens
    add_context_tokens(tok)
    return tok


@pytest.mark.parametrize("layout", ["context", "meco"])
def test_lm_eval_prefix_is_exactly_the_training_prefix_for_non_ascii_urls(recipe_tokenizer, layout):
    """The recipe's with-URL lm-eval prefix (decoded training ids, re-encoded apart by lm-eval) equals the training
    prefix (was: a cut inside a multi-byte character decoded to U+FFFD and re-encoded to other ids)."""
    tok = recipe_tokenizer
    for limit in (12, 20, 31, 32, 33):
        encoder = MetadataEncoder(tok, layout=layout, max_metadata_tokens=limit)
        prefixes = _prompt_prefixes(tok, metadata_template("url"), MetadataArguments(layout=layout, max_metadata_tokens=limit))
        for url in URLS:
            train_ids = encoder.prefix_ids([url])[0]
            text = prefixes[("url_conditioned", True)]({"url": url})
            assert "\ufffd" not in text, (limit, url)
            assert tok(text, add_special_tokens=False)["input_ids"] == train_ids, (layout, limit, url)
            markers = 3 if layout == "context" else 1
            assert limit - 3 <= len(train_ids) - markers <= limit  # at most three tokens fewer than the limit


# ------------------------------------------------------------------------------------ 5. public helpers' checks
def test_build_guidance_inputs_reads_str_prompts_as_generate_does(ctx_tokenizer):
    one = build_guidance_inputs(ctx_tokenizer, "Hello", "a.com")
    assert one["input_ids"].shape[0] == 1  # was 5 one-character prompts
    listed = build_guidance_inputs(ctx_tokenizer, ["Hello"], ["a.com"])
    assert all(torch.equal(one[k], listed[k]) for k in listed)
    both = build_guidance_inputs(ctx_tokenizer, ["Hello", "Bye"], "a.com")
    assert torch.equal(both["input_ids"], build_guidance_inputs(ctx_tokenizer, ["Hello", "Bye"], ["a.com"] * 2)["input_ids"])
    with pytest.raises(ValueError, match="one per prompt"):
        build_guidance_inputs(ctx_tokenizer, ["x", "y"], ["a"])
    with pytest.raises(TypeError, match="metadata must be"):
        build_guidance_inputs(ctx_tokenizer, ["x"], [5])


def test_metadata_encoder_refuses_a_non_bool_add_eos_and_str_batches(ctx_tokenizer):
    with pytest.raises(TypeError, match="add_eos must be True or False"):
        MetadataEncoder(ctx_tokenizer, add_eos="false")
    encoder = MetadataEncoder(ctx_tokenizer)
    with pytest.raises(TypeError, match="texts must be a list"):
        encoder.encode_batch("ab", ["u", "v"])
    with pytest.raises(TypeError, match="metadata must be a list"):
        encoder.encode_batch(["a", "b"], "uv")
    assert MetadataEncoder(ctx_tokenizer, add_eos=np.bool_(False)).encode_batch(["x"], [None])[0].input_ids[-1] != (
        ctx_tokenizer.eos_token_id
    )


@pytest.mark.parametrize("dropout", [float("nan"), np.float32("nan"), -0.5, 1.5, "0.1", True, None])
def test_keeps_metadata_refuses_a_dropout_outside_0_1(dropout):
    with pytest.raises(ValueError, match="metadata_dropout must be a number in"):
        keeps_metadata("doc", "u", 0, dropout)


@pytest.mark.parametrize("seed", [1.0, True, "1"])
def test_keeps_metadata_refuses_a_non_int_seed(seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        keeps_metadata("doc", "u", seed, 0.5)


def test_numpy_numbers_are_accepted_and_draw_as_python_ones(ctx_tokenizer):
    draws = [keeps_metadata(f"d{i}", "u", 1, 0.5) for i in range(200)]
    assert [keeps_metadata(f"d{i}", "u", np.int64(1), np.float32(0.5)) for i in range(200)] == draws
    collator = MetadataCollator(ctx_tokenizer, metadata_template(), metadata_dropout=np.float32(0.2), seed=np.int64(3))
    assert type(collator.metadata_dropout) is float and collator.metadata_dropout == pytest.approx(0.2)
    assert type(collator.seed) is int and collator.seed == 3
    callback = MetadataCooldownCallback(collator, np.float32(0.25))
    assert type(callback.cooldown_fraction) is float
    with pytest.raises(ValueError, match="metadata_dropout"):
        MetadataCollator(ctx_tokenizer, metadata_template(), metadata_dropout=np.float32("nan"))


# ------------------------------------------------------------------------------ 6. --layout meco conditions on the host
def test_meco_layout_defaults_to_the_host_and_keeps_an_explicit_template(ctx_tokenizer, tmp_path):
    def meta(*argv):
        return parse_recipe_args(RECIPE_TYPES, [*argv, "--output_dir", str(tmp_path)], resume="keep")[2]

    assert meta().template == "url" and meta("--layout", "meco").template == "url_host"
    assert meta("--layout", "meco", "--template", "url").template == "url"
    assert meta("--layout", "meco", "--template", "url_path").template == "url_path"
    args = MetadataArguments(layout="meco")
    collator = MetadataCollator(ctx_tokenizer, _template(args), layout="meco", metadata_dropout=0.0,
                                max_metadata_tokens=args.max_metadata_tokens)  # fmt: skip
    row = {"text": "Doc.", "url": "https://en.wikipedia.org/wiki/Bern?action=view"}
    decoded = ctx_tokenizer.decode(collator([row])["input_ids"][0])
    assert decoded.startswith(f"{ctx_tokenizer.bos_token}URL: en.wikipedia.org\n\nDoc.")  # was the full (cut) URL
