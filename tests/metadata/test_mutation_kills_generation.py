"""Mutation-testing gaps of metadata-guided generation that the other tests let through: the caller's own
suppress_tokens, and the per-prompt path for models without rotary embeddings (GPT-2 family), which must keep
`max_metadata_tokens` and the caller's `pad_token_id`. References: greedy decoding without the suppression,
`build_guidance_inputs` (the training-time prefix) and the documented batched layout."""

import pytest
import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from hf_ext.metadata import build_guidance_inputs, generate_with_metadata_guidance

from .conftest import tiny_llama

PROMPTS = ["hello", "a much longer prompt with words"]
META = ["docs.python.org/some/long/path", "news.example.com/x/y/z"]


@pytest.fixture(scope="module")
def tiny_gpt2(ctx_tokenizer):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(ctx_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("how", ["kwarg", "generation_config"])
def test_callers_suppress_tokens_are_kept_with_guidance(ctx_tokenizer, how):
    """Guidance adds its own suppressed tokens (BOS, context markers) and must keep the caller's (a keyword or a
    GenerationConfig's `suppress_tokens`, documented to count as if passed directly). Greedy decoding makes it
    visible: the token greedy picks without suppression is never generated once suppressed (score -inf). Dropped,
    the caller's suppression would silently not apply."""
    tok = ctx_tokenizer
    model = tiny_llama(len(tok), seed=0).eval()
    common = dict(guidance_scale=2.0, max_new_tokens=1, do_sample=False, return_text=False)
    picked = int(generate_with_metadata_guidance(model, tok, ["hello there"], ["a.org"], **common)[0, -1])
    kw = (
        {"suppress_tokens": [picked]}
        if how == "kwarg"
        else {"generation_config": GenerationConfig(suppress_tokens=[picked])}
    )
    out = generate_with_metadata_guidance(
        model, tok, ["hello there"], ["a.org"], output_scores=True, return_dict_in_generate=True, **common, **kw
    )
    assert int(out.sequences[0, -1]) != picked
    assert float(out.scores[0][0, picked]) == float("-inf")


def test_per_prompt_path_cuts_the_metadata_to_max_metadata_tokens(ctx_tokenizer, tiny_gpt2):
    """GPT-2 (no rotary embeddings) with prompts of different token lengths takes the per-prompt path; it must cut
    the metadata exactly as in training (`max_metadata_tokens=2`): the prompt part of the output equals
    build_guidance_inputs(..., max_metadata_tokens=2). Dropped there, every prompt would be conditioned on the full,
    untruncated metadata that the model never saw in training."""
    tok = ctx_tokenizer
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS}
    assert len(lengths) == 2  # different lengths: the per-prompt path
    ref = build_guidance_inputs(tok, PROMPTS, META, max_metadata_tokens=2)["input_ids"]
    full = build_guidance_inputs(tok, PROMPTS, META)["input_ids"]
    assert full.shape[1] > ref.shape[1]  # the cut matters
    out = generate_with_metadata_guidance(
        tiny_gpt2,
        tok,
        PROMPTS,
        META,
        guidance_scale=2.0,
        max_new_tokens=3,
        do_sample=False,
        return_text=False,
        max_metadata_tokens=2,
    )
    width = ref.shape[1]
    assert out.shape == (2, width + 3)
    assert torch.equal(out[:, :width], ref)


def test_per_prompt_path_pads_finished_continuations_with_the_callers_pad_token_id(ctx_tokenizer, tiny_gpt2):
    """On the per-prompt path the outputs are stacked as a batched call lays them out: a continuation that stopped
    early (at EOS) is right-padded with the `pad_token_id` passed to generate, as generate itself pads, not with the
    tokenizer's pad."""
    tok = ctx_tokenizer
    common = dict(guidance_scale=2.0, do_sample=False, return_text=False)
    first = int(
        generate_with_metadata_guidance(tiny_gpt2, tok, PROMPTS[:1], META[:1], max_new_tokens=1, **common)[0, -1]
    )
    pad = 5
    assert pad not in (tok.pad_token_id, first)
    out = generate_with_metadata_guidance(
        tiny_gpt2, tok, PROMPTS, META, max_new_tokens=4, eos_token_id=first, pad_token_id=pad, **common
    )
    width = build_guidance_inputs(tok, PROMPTS, META)["input_ids"].shape[1]
    assert out.shape[1] > width + 1  # the other prompt ran on: row 0 is right-padded
    assert int(out[0, width]) == first
    assert out[0, width + 1 :].tolist() == [pad] * (out.shape[1] - width - 1)


def test_keyword_settings_override_a_passed_generation_config(ctx_tokenizer):
    """Settings resolve as `generate()` resolves them: keyword arguments, then a passed `generation_config`, then the
    model's own. With `GenerationConfig(num_beams=2)` overridden by `num_beams=1`, generate() runs greedy, so guidance
    must run (and give the kwargs-only result) instead of refusing beam search; the other way round
    (`GenerationConfig(num_beams=1)`, `num_beams=2` passed) must be refused, not run beam search under guidance.
    Read the config first, the guard saw the wrong value both times."""
    tok = ctx_tokenizer
    model = tiny_llama(len(tok), seed=0).eval()
    prompts, meta = ["the", "a b"], ["a.org", "b.org"]
    common = dict(guidance_scale=2.0, do_sample=False, return_text=False)
    ref = generate_with_metadata_guidance(model, tok, prompts, meta, max_new_tokens=3, num_beams=1, **common)
    out = generate_with_metadata_guidance(
        model, tok, prompts, meta, generation_config=GenerationConfig(num_beams=2, max_new_tokens=3), num_beams=1,
        **common,
    )  # fmt: skip
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="num_beams > 1"):
        generate_with_metadata_guidance(
            model, tok, prompts, meta, generation_config=GenerationConfig(num_beams=1, max_new_tokens=3), num_beams=2,
            **common,
        )  # fmt: skip


def test_per_prompt_path_is_taken_when_only_the_unconditional_prompts_are_padded(ctx_tokenizer):
    """GPT-2 (learned absolute positions): what decides the per-prompt path is padding of the *unconditional* prompts,
    which transformers runs without position_ids. Here the metadata makes the conditional prompts equally long while
    the unconditional ones (empty context) differ: the guided texts must still equal a manual CFG loop on the
    unpadded prompts. Keyed on the conditional mask, the batch was generated as one and the short prompt's
    unconditional branch was read from shifted positions (silently different text)."""
    from transformers import GPT2Config

    from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END

    from .test_generation import manual_cfg_greedy

    tok = ctx_tokenizer
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.3,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg).eval()
    prompts, scale, steps = ["a", "alpha beta gamma"], 3.0, 8
    for k in range(1, 60):  # metadata that makes both conditional prompts the same length
        meta = ["https://" + "x" * k + ".org", "https://a.org"]
        inputs = build_guidance_inputs(tok, prompts, meta)
        if not (inputs["attention_mask"] == 0).any():
            break
    assert not (inputs["attention_mask"] == 0).any()  # conditional prompts: no padding
    assert (inputs["negative_prompt_attention_mask"] == 0).any()  # unconditional prompts: padded
    texts = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=steps, do_sample=False
    )
    blocked = [tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])]
    for i, text in enumerate(texts):
        cond = inputs["input_ids"][i][inputs["attention_mask"][i] == 1].tolist()
        uncond = inputs["negative_prompt_ids"][i][inputs["negative_prompt_attention_mask"][i] == 1].tolist()
        tokens = manual_cfg_greedy(model, cond, uncond, scale, steps, blocked)
        if tok.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tok.eos_token_id) + 1]
        assert text == tok.decode(tokens, skip_special_tokens=True), i
