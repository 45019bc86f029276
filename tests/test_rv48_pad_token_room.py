"""A fresh model whose embedding size is given with no row left for a pad token of its own.

Since a fresh model gets `<|pad|>` for a loaded tokenizer without a pad token (one row more than the tokenizer has),
`--config_overrides vocab_size=N` with N the tokenizer's size (Llama's tokenizer and config: 32000) put the pad id N
past the embedding: both recipes ended with transformers' raw `AssertionError: Padding_idx must be within
num_embeddings` before training, where the run trained before (pad = EOS). Such a run pads with EOS again (logged)."""

import logging

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_ext.recipes._common import set_missing_pad_token

from .test_pretrain import TINY

# tests/metadata/test_recipe.py's TINY without its --vocab_size (refused with a loaded tokenizer)
META_TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
             "--block_size", "64", "--per_device_train_batch_size", "4", "--max_eval_docs", "4", "--doc_eval_steps", "2",
             "--logging_steps", "2", "--guidance_max_new_tokens", "4", "--disable_tqdm", "true"]  # fmt: skip
WORDS = [f"the return value of function {i} is the sum of {i} and {i + 1}" for i in range(200)]


def _padless_tokenizer():
    """A byte-level BPE tokenizer with EOS and no pad token, whose vocabulary has no `<|pad|>` (GPT-2's, Llama's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(WORDS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_set_missing_pad_token_pads_with_eos_when_the_given_vocab_has_no_room(caplog):
    n = len(_padless_tokenizer())
    full = _padless_tokenizer()
    with caplog.at_level(logging.WARNING):
        set_missing_pad_token(full, fresh_model=True, vocab_size=n)
    assert full.pad_token_id == full.eos_token_id and len(full) == n
    assert f"vocab_size={n} leaves no embedding row" in caplog.text
    roomy = _padless_tokenizer()
    set_missing_pad_token(roomy, fresh_model=True, vocab_size=n + 64)  # a padded vocabulary: room for <|pad|>
    assert roomy.pad_token == "<|pad|>" and roomy.pad_token_id == n
    unset = _padless_tokenizer()
    set_missing_pad_token(unset, fresh_model=True)  # the model takes the tokenizer's size
    assert unset.pad_token == "<|pad|>" and len(unset) == n + 1


def test_pretrain_with_vocab_size_equal_to_a_padless_tokenizer_trains(tmp_path):
    from hf_ext.recipes.pretrain import main

    folder = tmp_path / "tok"
    tok = _padless_tokenizer()
    tok.save_pretrained(folder)
    n = len(tok)
    args = ["--tokenizer_name", str(folder), "--config_overrides", f"vocab_size={n}", "--max_steps", "2"]
    metrics = main(TINY + args + ["--max_new_tokens", "2", "--output_dir", str(tmp_path / "run")])
    assert metrics["eval_loss"] > 0


def test_metadata_pretrain_with_vocab_size_equal_to_a_padless_tokenizer_trains(tmp_path):
    from hf_ext.recipes import metadata_pretrain

    folder = tmp_path / "tok"
    tok = _padless_tokenizer()
    tok.save_pretrained(folder)
    n = len(tok)
    args = ["--tokenizer_name", str(folder), "--config_overrides", f"vocab_size={n}", "--max_steps", "2"]
    results = metadata_pretrain.main([*META_TINY, *args, "--output_dir", str(tmp_path / "run")])
    assert results["final"]["url_model_with_context"] > 0


@pytest.mark.parametrize("override", [None, "vocab_size=512"])
def test_metadata_pretrain_with_a_padless_tokenizer_gets_its_own_pad(tmp_path, override):
    """What 4913b08 did for metadata_pretrain, end to end: the models' pad is <|pad|>, not EOS."""
    from transformers import AutoConfig

    from hf_ext.recipes import metadata_pretrain

    folder = tmp_path / "tok"
    tok = _padless_tokenizer()
    tok.save_pretrained(folder)
    args = ["--tokenizer_name", str(folder), "--max_steps", "2"]
    args += ["--config_overrides", override] if override else []
    metadata_pretrain.main([*META_TINY, *args, "--output_dir", str(tmp_path / "run")])
    config = AutoConfig.from_pretrained(tmp_path / "run" / "url_conditioned")
    assert config.pad_token_id == len(tok) != tok.eos_token_id
