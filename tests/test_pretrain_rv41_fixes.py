"""Pretrain: the sample check of a learned position table refuses only what generation cannot run (audit pass 35)."""

from __future__ import annotations

import pytest
import torch


def _gpt2(positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=positions)
    return GPT2LMHeadModel(config).eval()


def test_sample_that_fills_the_position_table_is_accepted():
    """generate() feeds the prompt and every new token but the last, so a prompt of 4 tokens plus 13 new tokens on a
    gpt2 with 16 positions runs (17 tokens out, positions 0..15 used); it was refused ("use --max_new_tokens <= 12").
    One more new token is the first that fails (IndexError of the position embedding) and stays refused."""
    from hf_ext.recipes._common import check_learned_positions

    model = _gpt2(16)
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(prompt, max_new_tokens=13, min_new_tokens=13, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 17)
    check_learned_positions(model, "gpt2", 16, prompt_tokens=4, max_new_tokens=13)
    with pytest.raises(IndexError):
        model.generate(prompt, max_new_tokens=14, min_new_tokens=14, do_sample=False, pad_token_id=0)
    with pytest.raises(ValueError, match=r"use --max_new_tokens <= 13 or a shorter --prompt"):
        check_learned_positions(model, "gpt2", 16, prompt_tokens=4, max_new_tokens=14)
