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
