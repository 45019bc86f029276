"""Audit pass 42 (fd52): memorization probes longer than a learned position table are refused by name, and the
model is put back in training mode when a probe fails.

A GPT-2-style model (learned absolute positions, `n_positions`) indexed its position table past its end and raised a
raw `IndexError: index out of range in self` from `canary_exposure` / `text_losses` (a text longer than the table)
and from `measure_memorization` (a prefix plus the generated tokens longer than the table).
"""

import pytest
import torch


@pytest.fixture(scope="module")
def short_gpt2(small_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(small_tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    cfg.eos_token_id = cfg.bos_token_id = small_tokenizer.eos_token_id
    return GPT2LMHeadModel(cfg)


def test_canary_exposure_names_a_text_longer_than_the_position_table(short_gpt2, small_tokenizer):
    from hf_ext.federated import canary_exposure

    short = "Record 123-45: alpha amber anchor apple"
    long = "Record 123-45: " + " ".join(["alpha amber anchor apple arrow"] * 40)
    assert len(small_tokenizer(long, add_special_tokens=False)["input_ids"]) > 64
    assert canary_exposure(short_gpt2, small_tokenizer, [short], [short]) == 0.0  # within the table: scored
    with pytest.raises(ValueError, match=r"text 0 .*max_position_embeddings=64.*cut the texts"):
        canary_exposure(short_gpt2, small_tokenizer, [long], [short])


def test_measure_memorization_names_probes_longer_than_the_position_table(short_gpt2, small_tokenizer):
    from hf_ext.federated import make_canaries, measure_memorization

    canaries = make_canaries(2, {1: 1.0}, num_words=60)
    short_gpt2.train()
    with pytest.raises(ValueError, match=r"prefix length 20 plus `max_new_tokens=60`.*max_position_embeddings=64"):
        measure_memorization(short_gpt2, small_tokenizer, canaries, (20,), window=50)
    assert short_gpt2.training  # put back in training mode although the probe failed
    # within the table the probes run (prefix 4 + 50 + 10 generated = 64 positions)
    res = measure_memorization(short_gpt2, small_tokenizer, canaries, (4,), window=50)
    assert res["overall"]["num_canaries"] == 2
