"""md35 audit fixes: a cooldown that rounds to no step is not silent."""

import logging

import pytest
from transformers import TrainerState, TrainingArguments

from hf_ext.metadata import MetadataCollator, MetadataCooldownCallback, metadata_template


def _begin(tok, tmp_path, max_steps, fraction, caplog):
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.0, max_length=64)
    callback = MetadataCooldownCallback(collator, cooldown_fraction=fraction)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, use_cpu=True, report_to="none")
    state = TrainerState(max_steps=max_steps, global_step=0)
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.callbacks"):
        callback.on_train_begin(args, state, None)
    return callback


@pytest.mark.parametrize("max_steps, fraction", [(4, 0.1), (5, 0.1), (20, 0.02)])
def test_a_cooldown_that_rounds_to_no_step_warns(ctx_tokenizer, tmp_path, caplog, max_steps, fraction):
    """max_steps - round(fraction * max_steps) == max_steps: every step trains with metadata (the recipe's default
    --cooldown_fraction 0.1 with --max_steps 5 did so silently)."""
    callback = _begin(ctx_tokenizer, tmp_path, max_steps, fraction, caplog)
    assert callback.switch_step == max_steps
    assert "rounds to 0 cooldown steps" in caplog.text
    assert f"max_steps={max_steps}" in caplog.text and "cooldown_fraction" in caplog.text


@pytest.mark.parametrize("max_steps, fraction", [(6, 0.1), (10, 0.1), (5, 0.0)])
def test_a_cooldown_of_at_least_one_step_or_none_asked_does_not_warn(
    ctx_tokenizer, tmp_path, caplog, max_steps, fraction
):
    callback = _begin(ctx_tokenizer, tmp_path, max_steps, fraction, caplog)
    assert (callback.switch_step < max_steps) == (fraction > 0)
    assert "cooldown steps" not in caplog.text


def _recipe_args(tmp_path, *extra):
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.metadata_pretrain import (
        MetadataArguments,
        MetadataDataArguments,
        MetadataModelArguments,
        MetadataTrainingArguments,
    )

    from .test_recipe import TINY

    argv = [*TINY, "--max_steps", "2", "--model_type", "gpt2", "--output_dir", str(tmp_path / "never"), *extra]
    classes = (MetadataModelArguments, MetadataDataArguments, MetadataArguments, MetadataTrainingArguments)
    return parse_recipe_args(classes, argv, resume="keep")


def test_recipe_refuses_a_guidance_example_past_a_learned_position_table_before_any_write(tmp_path):
    """--model_type gpt2 (1024 learned positions) and --guidance_max_new_tokens 1100: generate failed with a raw
    IndexError after both models were trained, and no metadata_results.json was written."""
    from hf_ext.recipes.metadata_pretrain import main

    from .test_recipe import TINY

    out = tmp_path / "never"
    argv = ["--model_type", "gpt2", "--guidance_max_new_tokens", "1100", "--max_steps", "2", "--output_dir", str(out)]
    with pytest.raises(ValueError, match=r"--guidance_max_new_tokens 1100: .* 1024 positions .* <= \d+ "):
        main([*TINY, *argv])
    assert not out.exists()


def test_the_guidance_check_admits_the_largest_value_it_names_and_rotary_models(ctx_tokenizer, tmp_path):
    import re

    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import add_context_tokens
    from hf_ext.recipes.metadata_pretrain import _template, check_guidance_fits, load_documents

    model_args, data_args, meta_args, training_args = _recipe_args(tmp_path, "--guidance_max_new_tokens", "1100")
    tok = build_tokenizer(data_args.vocab_size)
    add_context_tokens(tok)
    _, eval_ds, _ = load_documents(data_args, training_args.seed)
    template = _template(meta_args)
    with pytest.raises(ValueError) as err:
        check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)
    largest = int(re.search(r"<= (\d+)", str(err.value)).group(1))
    meta_args.guidance_max_new_tokens = largest
    check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)  # fits exactly
    meta_args.guidance_max_new_tokens = largest + 1
    with pytest.raises(ValueError, match="--guidance_max_new_tokens"):
        check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)
    model_args.model_type = "fog"  # rotary: no position table to run past
    check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)


@pytest.mark.parametrize(
    "kind, kwargs, row",
    [
        ("topic_format", {"max_chars": 9}, {"topic": "Science", "format": "Tutorial"}),  # the cut ends in a space
        ("column", {"column": "source"}, {"source": "  wiki \n"}),
        ("format", {"fmt": "{source} | {topic}"}, {"source": "wiki", "topic": None}),
    ],
)
def test_training_and_guided_generation_condition_on_the_same_prefix(ctx_tokenizer, kind, kwargs, row):
    """md35 left-alone, fixed by the lead: a template result with whitespace around it (a max_chars cut ending in a
    space, a padded column value, a format whose last field is missing) trained verbatim while guided generation
    strips the metadata string, so generation conditioned on a prefix the model never saw."""
    from hf_ext.metadata import MetadataEncoder, build_guidance_inputs

    metadata = metadata_template(kind, **kwargs)(row)
    trained = MetadataEncoder(ctx_tokenizer, add_eos=False).encode_batch(["The"], [metadata])[0].input_ids
    generated = build_guidance_inputs(ctx_tokenizer, ["The"], [metadata])["input_ids"][0].tolist()
    assert metadata == metadata.strip() and metadata
    assert list(trained) == generated
