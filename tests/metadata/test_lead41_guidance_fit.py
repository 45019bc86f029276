"""The metadata recipe's guidance fit check admits the longest guided generation a learned position table runs:
generate() feeds the prompt and every new token but the last, so a prompt of L tokens takes `positions - L + 1` new
tokens (it refused that one, as pretrain's sample check did before rv41's correction)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_ext.metadata import MetadataEncoder
from hf_ext.metadata.generation import generate_with_metadata_guidance

POSITIONS = 40
PROMPTS = ["the value", "the value of the"]
METADATA = ["https://a.org/x", "https://bbbbbb.org/yyyy"]


def test_guided_generation_runs_one_token_past_prompt_plus_new_equal_to_the_positions(ctx_tokenizer):
    """The behaviour the check's bound rests on, with guidance (two branches) and a left-padded batch."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(ctx_tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=POSITIONS,
                        bos_token_id=ctx_tokenizer.bos_token_id, eos_token_id=ctx_tokenizer.eos_token_id)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    longest = max(
        len(d.input_ids) for d in MetadataEncoder(ctx_tokenizer, add_eos=False).encode_batch(PROMPTS, METADATA)
    )
    fits = POSITIONS - longest + 1
    kwargs = dict(guidance_scale=2.0, do_sample=False)
    generate_with_metadata_guidance(model, ctx_tokenizer, PROMPTS, METADATA, max_new_tokens=fits, min_new_tokens=fits,
                                    **kwargs)  # fmt: skip
    with pytest.raises(IndexError):
        generate_with_metadata_guidance(model, ctx_tokenizer, PROMPTS, METADATA, max_new_tokens=fits + 1,
                                        min_new_tokens=fits + 1, **kwargs)  # fmt: skip
