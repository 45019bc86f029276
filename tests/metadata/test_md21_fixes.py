"""Fixes of the md21 metadata audit.

1. A model left at its old size after `add_context_tokens(tokenizer)` (without `model`) failed in guided generation
   and in the first training forward with a raw `IndexError: index out of range in self`.
2. A tokenizer with neither pad nor EOS made `build_guidance_inputs` fail with a raw `TypeError` in `torch.full`.
3. In the "context" layout a packed row that continues a document repeated `[BOS] <|context_begin|>...<|context_end|>`;
   the reference pipeline (`--add-metadata-per-sequence`) repeats the context block only, without BOS.
4. The recipe's `--guidance_scale` errors contradicted each other: -1, nan and inf said "a finite number >= 0" (the
   shared non-negative check), 0 then "a finite positive number".
"""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_ext.data import build_tokenizer
from hf_ext.metadata import (
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataEncoder,
    MetadataTrainer,
    add_context_tokens,
    build_guidance_inputs,
    generate_with_metadata_guidance,
    metadata_template,
)

from .conftest import tiny_llama

# ---------------------------------------------------------------------------------------------------------------------
# 1. a model whose embeddings do not cover the context tokens


def _unresized(tok):
    """A tiny Llama sized for the tokenizer before its two context tokens were added."""
    return tiny_llama(len(tok) - 2, hidden=32).eval()


def test_guidance_refuses_a_model_without_rows_for_the_context_tokens(ctx_tokenizer):
    tok = ctx_tokenizer
    model = _unresized(tok)
    with pytest.raises(ValueError, match=r"add_context_tokens\(tokenizer, model\)") as err:
        generate_with_metadata_guidance(model, tok, ["The"], ["a.org"], guidance_scale=2.0, max_new_tokens=2)
    assert "<|context_begin|>" in str(err.value) and f"{len(tok) - 2} rows" in str(err.value)
    with pytest.raises(ValueError, match=r"add_context_tokens\(tokenizer, model\)"):  # no guidance: the same check
        generate_with_metadata_guidance(model, tok, "The", None, guidance_scale=1.0, max_new_tokens=2)
    add_context_tokens(tok, model)  # the fix named by the error
    out = generate_with_metadata_guidance(model, tok, ["The"], ["a.org"], guidance_scale=2.0, max_new_tokens=2)
    assert len(out) == 1


def test_collator_check_model_names_the_fix(ctx_tokenizer):
    tok = ctx_tokenizer
    collator = MetadataCollator(tok, metadata_template("url"), max_length=16)
    with pytest.raises(ValueError, match=r"MetadataCollator's batches.*add_context_tokens\(tokenizer, model\)"):
        collator.check_model(_unresized(tok))
    collator.check_model(tiny_llama(len(tok), hidden=32))  # a model with every row passes
    # the meco layout puts no context token into a batch: a model without those two rows can train with it
    MetadataCollator(tok, metadata_template("url_host"), layout="meco", max_length=16).check_model(_unresized(tok))


def _trainer(tok, tmp_path, cls, with_callback):
    rows = [{"text": f"doc {i} words here", "url": f"https://site{i % 3}.com/p{i}"} for i in range(8)]
    collator = MetadataCollator(tok, metadata_template("url"), metadata_dropout=0.0, max_length=32)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip
    callbacks = [MetadataCooldownCallback(collator, cooldown_fraction=0.5)] if with_callback else []
    return cls(
        model=_unresized(tok).train(), args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
        callbacks=callbacks,
    )  # fmt: skip


@pytest.mark.parametrize("cls, with_callback", [(Trainer, True), (MetadataTrainer, True), (MetadataTrainer, False)])
def test_training_refuses_a_model_without_rows_for_the_context_tokens(ctx_tokenizer, tmp_path, cls, with_callback):
    """Before, the first forward failed with `IndexError: index out of range in self`."""
    trainer = _trainer(ctx_tokenizer, tmp_path, cls, with_callback)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"<\|context_begin\|>.*add_context_tokens\(tokenizer, model\)"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())  # nothing trained


# ---------------------------------------------------------------------------------------------------------------------
# 2. a tokenizer with neither pad nor EOS


@pytest.mark.parametrize("prompts", [["a", "a much longer prompt"], ["one prompt"]])
def test_guidance_inputs_without_pad_or_eos_name_the_fix(prompts):
    tok = build_tokenizer(512)
    add_context_tokens(tok)
    tok.pad_token = None
    tok.eos_token = None
    assert tok.bos_token_id is not None and tok.pad_token_id is None and tok.eos_token_id is None
    with pytest.raises(ValueError, match=r"tokenizer.*neither a pad_token nor an eos_token.*tokenizer\.pad_token"):
        build_guidance_inputs(tok, prompts, "x.org")
    tok.pad_token = tok.bos_token  # the fix the error names
    inputs = build_guidance_inputs(tok, prompts, "x.org")
    assert inputs["input_ids"].shape[0] == len(prompts)


# ---------------------------------------------------------------------------------------------------------------------
# 3. continued packed rows: the context again, without BOS


@pytest.mark.parametrize("document_attention", [True, False])
@pytest.mark.parametrize("layout, dropout", [("context", 0.0), ("context", 1.0), ("meco", 0.0), ("meco", 1.0)])
def test_a_continued_row_repeats_the_context_block_without_bos(ctx_tokenizer, layout, dropout, document_attention):
    """In the "context" layout [CB] metadata [CE] (the empty pair when dropped) starts a continued row, as in the
    reference pipeline; the "meco" layout keeps its whole prefix ([BOS] URL: ...; [BOS] for plain text), as before."""
    tok = ctx_tokenizer
    row = {"text": " ".join(f"w{i}" for i in range(40)), "url": "https://a.org/x"}
    collator = MetadataCollator(
        tok, metadata_template("url_host"), layout=layout, metadata_dropout=dropout, block_size=16,
        document_attention=document_attention,
    )  # fmt: skip
    doc = MetadataEncoder(tok, layout=layout).encode_batch([row["text"]], ["a.org" if dropout == 0 else None])[0]
    prefix, body = doc.input_ids[: doc.prefix_length], doc.input_ids[doc.prefix_length :]
    batch = collator([row])
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    assert len(ids) >= 3
    assert ids[0][: len(prefix)] == prefix and prefix[0] == tok.bos_token_id  # the document's start: BOS
    if layout == "context":
        header = prefix[1:]
        assert header[0] == tok.convert_tokens_to_ids("<|context_begin|>")
        assert all(tok.bos_token_id not in r for r in ids[1:])
    else:
        header = prefix
    for r in range(1, len(ids)):
        assert ids[r][: len(header)] == header, r
        assert labels[r][: len(header)] == [-100] * len(header) and labels[r][len(header)] != -100, r
        if document_attention:  # the continued chunk is its own segment: positions restart at its header
            assert batch["position_ids"][r, 0] == 0
    supervised = [t for row_labels in labels for t in row_labels if t != -100]
    assert supervised == body  # no document token lost


# ---------------------------------------------------------------------------------------------------------------------
# 4. one message for every invalid recipe --guidance_scale


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0", "-inf"])
def test_recipe_guidance_scale_errors_name_one_range(tmp_path, value):
    from hf_ext.recipes.metadata_pretrain import main

    out = tmp_path / "never"
    with pytest.raises(ValueError) as err:
        main([f"--guidance_scale={value}", "--output_dir", str(out), "--max_steps", "2"])  # "=": -inf is no option
    assert str(err.value).startswith("--guidance_scale must be a finite number > 0 (1 = no guidance), got "), err.value
    assert not out.exists()


def test_library_guidance_scale_error_names_the_same_range(ctx_tokenizer):
    model = tiny_llama(len(ctx_tokenizer), hidden=32).eval()
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^guidance_scale must be a finite number > 0 \(1 = no guidance\)"):
            generate_with_metadata_guidance(model, ctx_tokenizer, ["a"], ["x"], guidance_scale=bad, max_new_tokens=1)


def test_collator_check_model_covers_the_eos_row():
    """mu22 F6: an EOS token added after the model was sized (no embedding row) is refused by `check_model` with
    `add_eos=True` (training would fail with a raw IndexError), and not checked with `add_eos=False`."""
    from hf_ext.metadata import add_context_tokens

    tok = build_tokenizer(512)
    add_context_tokens(tok)
    rows = len(tok)
    tok.add_special_tokens({"eos_token": "<|doc_end|>"})
    model = tiny_llama(rows, hidden=32)
    with pytest.raises(ValueError, match=r"add_context_tokens\(tokenizer, model\)"):
        MetadataCollator(tok, metadata_template("url"), add_eos=True, max_length=64).check_model(model)
    MetadataCollator(tok, metadata_template("url"), add_eos=False, max_length=64).check_model(model)
