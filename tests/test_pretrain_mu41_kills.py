"""Mutation-testing kills (mu41) for the pass-35 learned position limit of the pretrain recipe."""

from __future__ import annotations

import pytest


def _opt(positions: int):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                       word_embed_proj_dim=16, max_position_embeddings=positions)  # fmt: skip
    return OPTForCausalLM(config)


def test_opt_position_limit_is_its_table_less_the_offset():
    """OPT's learned position table has `max_position_embeddings + 2` rows (its offset of 2): the limit is
    `max_position_embeddings`, and a block of that many tokens runs while one more does not."""
    import torch

    from hf_ext.recipes._common import check_learned_positions, learned_position_limit

    model = _opt(16).eval()
    assert model.model.decoder.embed_positions.num_embeddings == 18
    assert learned_position_limit(model) == 16
    with torch.no_grad():
        model(torch.ones(1, 16, dtype=torch.long))  # the limit runs
    # generate() feeds back every new token but the last: 6 + 11 tokens use positions 0..15 (rv41)
    check_learned_positions(model, "opt", 16, prompt_tokens=6, max_new_tokens=11)
    with pytest.raises(ValueError, match=r"--block_size 17 is longer than the 16 learned absolute positions of opt"):
        check_learned_positions(model, "opt", 17)
    with pytest.raises(ValueError, match=r"--max_new_tokens <= 11"):
        check_learned_positions(model, "opt", 16, prompt_tokens=6, max_new_tokens=12)
