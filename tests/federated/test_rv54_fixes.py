"""Audit pass 42 (rv54): the memorization probes' IndexError translation (fd52) names a tokenizer of another
vocabulary, not the position table, when the text's token ids lie outside the model's input embedding.

fd52 turned any IndexError of a text longer than `max_position_embeddings` into "needs N positions ... cut the
texts": a RoPE model (which runs past that length) given a tokenizer with more tokens than its embedding rows was told
to cut its texts, and a cut text then failed with the raw IndexError again.
"""

import pytest
import torch


def _llama(vocab_size: int, max_positions: int = 64, tokenizer=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        # the tokenizer's special ids (LlamaConfig's default eos_token_id 2 is the hf_ext tokenizer's pad id)
        **({f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")} if tokenizer else {}),
    )
    return LlamaForCausalLM(cfg)


LONG = "Record 123-45: " + " ".join(["alpha amber anchor apple arrow"] * 20)
SHORT = "Record 123-45: alpha amber anchor apple"


@pytest.mark.parametrize("text", [LONG, SHORT])
def test_text_losses_name_a_tokenizer_of_another_vocabulary(small_tokenizer, text):
    from hf_ext.federated import canary_exposure

    model = _llama(100)  # 100 embedding rows, the tokenizer has 512 tokens
    model.train()
    with pytest.raises(ValueError, match=r"text 0 .*holds token id \d+, but the model's input embedding has 100 rows"):
        canary_exposure(model, small_tokenizer, [text], [SHORT])
    assert model.training


def test_gpt2_with_another_vocabulary_and_a_long_text_names_the_vocabulary(small_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_ext.federated import text_losses

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    # the token embedding fails first (wte before wpe): the vocabulary is the cause, not the position table
    with pytest.raises(ValueError, match=r"input embedding has 100 rows.*own tokenizer"):
        text_losses(model, small_tokenizer, [LONG])


def test_measure_memorization_names_a_tokenizer_of_another_vocabulary(small_tokenizer):
    from hf_ext.federated import make_canaries, measure_memorization

    canaries = make_canaries(2, {1: 1.0}, num_words=60)
    model = _llama(100)
    with pytest.raises(ValueError, match=r"prefix length 20 .*input embedding has 100 rows"):
        measure_memorization(model, small_tokenizer, canaries, (20,), window=50)
