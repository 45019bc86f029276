"""mu35 mutation run: pins for the md35 changes (cooldown warning threshold, guidance-fit prompt length)."""

import logging
import re

import pytest
from datasets import Dataset
from transformers import TrainerState, TrainingArguments

from hf_ext.metadata import MetadataCollator, MetadataCooldownCallback, metadata_template

from .test_md35_fixes import _recipe_args


@pytest.mark.parametrize("max_steps", [4, 5])
def test_the_cooldown_warning_names_the_smallest_fraction_that_gives_a_step(
    ctx_tokenizer, tmp_path, caplog, max_steps
):
    """The warning's 'cooldown_fraction above 0.5 / max_steps' is the true threshold: just above it gives one
    cooldown step (round() of exactly 0.5 is 0)."""
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, max_length=64)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.callbacks"):
        MetadataCooldownCallback(collator, cooldown_fraction=0.1).on_train_begin(
            args, TrainerState(max_steps=max_steps, global_step=0), None
        )
    threshold = float(re.search(r"cooldown_fraction above ([0-9.e-]+)", caplog.text).group(1))
    assert threshold == pytest.approx(0.5 / max_steps)
    for fraction, steps in ((threshold, 0), (threshold * 1.01, 1)):
        callback = MetadataCooldownCallback(collator, cooldown_fraction=fraction)
        callback.on_train_begin(args, TrainerState(max_steps=max_steps, global_step=0), None)
        assert max_steps - callback.switch_step == steps


def test_the_guidance_check_measures_the_longest_prompt_of_the_held_out_documents(tmp_path):
    """The check's largest --guidance_max_new_tokens is the position table minus the longest generation prompt of
    the documents generation conditions on (the first held-out document; with a domain vocabulary also the first of
    each host; each with its metadata and --guidance_prompt), measured here with the generation path's own `build_guidance_inputs`."""
    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import InvalidMetadataError, add_context_tokens, build_guidance_inputs
    from hf_ext.recipes.metadata_pretrain import _template, check_guidance_fits, load_documents

    prompt = "Once upon a time there was"
    model_args, data_args, meta_args, training_args = _recipe_args(
        tmp_path, "--guidance_max_new_tokens", "1100", "--guidance_prompt", prompt
    )
    tok = build_tokenizer(data_args.vocab_size)
    add_context_tokens(tok)
    _, held_out, _ = load_documents(data_args, training_args.seed)
    row = dict(held_out[0])
    urls = ["https://a.org/x", "https://www.a-longer-host.example.org/a/deeper/path/page.html", "https://b.org/y"]
    eval_ds = Dataset.from_list([{**row, "url": url} for url in urls])  # the longest is not the first
    template = _template(meta_args)
    docs = [dict(r) for r in eval_ds.select(range(min(len(eval_ds), data_args.max_eval_docs)))]

    def metadata(doc):
        try:
            return template(doc)
        except InvalidMetadataError:
            return None

    lengths = [
        int(
            build_guidance_inputs(
                tok,
                [prompt],
                [metadata(d)],
                layout=meta_args.layout,
                max_metadata_tokens=meta_args.max_metadata_tokens,
            )["attention_mask"].sum()
        )
        for d in docs
    ]
    assert lengths[0] < max(lengths) == lengths[1]  # the longest prompt is not the first document's
    # without a domain vocabulary generation conditions on the first document only (rv36 F3)
    with pytest.raises(ValueError) as err:
        check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)
    assert f"longest prompt ({lengths[0]} tokens" in str(err.value)
    assert int(re.search(r"<= (\d+)", str(err.value)).group(1)) == 1025 - lengths[0]  # the last token is not fed
    # the synthetic corpus' steering measure also conditions on the first document of each host (here "www": the
    # second, longest one): the longest of those prompts
    with pytest.raises(ValueError) as err:
        check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds, {"www": ["word"]})
    assert f"longest prompt ({max(lengths)} tokens" in str(err.value)
    assert int(re.search(r"<= (\d+)", str(err.value)).group(1)) == 1025 - max(lengths)
