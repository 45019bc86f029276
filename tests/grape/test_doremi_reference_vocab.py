"""DoReMi's excess loss compares the proxy's and the reference's losses on the same token ids: a reference model
with another vocabulary (another tokenizer) is refused when the trainer is built, naming the reference. Before, a
larger one ran silently on mismatched tokens and a smaller one crashed mid-training with an embedding IndexError."""

import re

import pytest

from hf_ext.grape import GrapeTrainer

from .test_trainer import make_args


@pytest.mark.parametrize("delta", [64, -8])
def test_a_reference_with_another_vocabulary_is_refused(delta, synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    vocab = grape_helpers["VOCAB"]
    reference = grape_helpers["tiny_llama"](vocab=vocab + delta, seed=9)
    with pytest.raises(ValueError, match=rf"reference model \(reference_model\) has a vocabulary of {vocab + delta}"):
        GrapeTrainer(model=grape_helpers["tiny_llama"](), args=make_args(tmp_path, reweight_method="doremi"),
                     train_dataset=train, target_datasets=targets, reference_model=reference)  # fmt: skip


def test_a_saved_reference_with_another_vocabulary_is_refused_by_its_path(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    grape_helpers["tiny_llama"](vocab=grape_helpers["VOCAB"] + 64).save_pretrained(tmp_path / "ref")
    args = make_args(tmp_path / "out", reweight_method="doremi", reference_model_name_or_path=str(tmp_path / "ref"))
    with pytest.raises(ValueError, match=re.escape(f"reference model ({tmp_path / 'ref'}) has a vocabulary")):
        GrapeTrainer(model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=targets)


def test_a_reference_with_the_same_vocabulary_is_taken(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    reference = grape_helpers["tiny_llama"](seed=9)
    trainer = GrapeTrainer(model=grape_helpers["tiny_llama"](), args=make_args(tmp_path, reweight_method="doremi"),
                           train_dataset=train, target_datasets=targets, reference_model=reference)  # fmt: skip
    assert trainer.reference_model is reference


@pytest.mark.parametrize("delta, named", [(-1, True), (-8, False), (1, False)])
def test_a_reference_one_row_short_names_the_pad_token_change(delta, named, synthetic, grape_helpers, tmp_path):
    """A reference the grape recipe trained before 2026-12-07 with a pad-less tokenizer padded with EOS: one embedding
    row fewer than the model trained now (which gets a <|pad|> token of its own). The refusal said only "another
    tokenizer", which the user had not changed."""
    train, targets = synthetic
    reference = grape_helpers["tiny_llama"](vocab=grape_helpers["VOCAB"] + delta, seed=9)
    with pytest.raises(ValueError) as info:
        GrapeTrainer(model=grape_helpers["tiny_llama"](), args=make_args(tmp_path, reweight_method="doremi"),
                     train_dataset=train, target_datasets=targets, reference_model=reference)  # fmt: skip
    assert ("before 2026-12-07" in str(info.value)) is named
