"""Audit md51: metadata guidance with transformers' generation features."""

import pytest
import torch

from hf_ext.metadata import generate_with_metadata_guidance

from .conftest import tiny_llama


def _sharp_llama(tok):
    """A random tiny Llama with peaked next-token distributions, so that each guidance scale gives other scores."""
    model = tiny_llama(len(tok), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(6.0)
    return model.eval()


def _first_scores(model, tok, **kwargs):
    out = generate_with_metadata_guidance(
        model,
        tok,
        ["the river flows"],
        ["https://a.org/x"],
        return_text=False,
        output_scores=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    return out.scores[0][0]


def test_a_generation_configs_guidance_scale_is_used_when_the_argument_is_not_given(ctx_tokenizer):
    """A GenerationConfig(guidance_scale=4) without the guidance_scale argument guides with 4, as generate() reads its
    generation_config; until md51 the function's own default (1.5) silently replaced it."""
    from transformers import GenerationConfig

    tok = ctx_tokenizer
    model = _sharp_llama(tok)
    common = dict(max_new_tokens=1, do_sample=False)
    by_config = _first_scores(model, tok, generation_config=GenerationConfig(guidance_scale=4.0, **common))
    by_argument = _first_scores(model, tok, guidance_scale=4.0, **common)
    default = _first_scores(model, tok, **common)
    assert not torch.allclose(by_argument, default)  # the scales give other scores here
    assert torch.equal(by_config, by_argument)
    # without guidance_scale anywhere the documented default (1.5) applies, also with a config that does not set it
    assert torch.equal(default, _first_scores(model, tok, guidance_scale=1.5, **common))
    assert torch.equal(default, _first_scores(model, tok, generation_config=GenerationConfig(**common)))
    # an explicit argument still wins over the config
    explicit = _first_scores(
        model, tok, guidance_scale=2.0, generation_config=GenerationConfig(guidance_scale=4.0, max_new_tokens=1)
    )
    assert torch.equal(explicit, _first_scores(model, tok, guidance_scale=2.0, max_new_tokens=1))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_generation_configs_out_of_range_guidance_scale_is_refused_naming_it(ctx_tokenizer, bad):
    from transformers import GenerationConfig

    tok = ctx_tokenizer
    model = _sharp_llama(tok)
    config = GenerationConfig(max_new_tokens=1)
    config.guidance_scale = bad
    with pytest.raises(ValueError, match=r"generation_config\.guidance_scale"):
        generate_with_metadata_guidance(model, tok, ["the"], ["a.org"], generation_config=config)


def test_a_streamer_is_refused_where_prompts_are_generated_one_by_one(ctx_tokenizer):
    """GPT-2 (learned absolute positions) with prompts of different token lengths: the prompts are generated one by one,
    and each call ends the stream. A TextIteratorStreamer stopped after the first prompt, and the second prompt's text
    was silently never streamed (a Llama batch raises transformers' "batch size 1" error). Refused up front now; one
    prompt streams as before."""
    import threading

    from transformers import GPT2Config, GPT2LMHeadModel, TextIteratorStreamer

    tok = ctx_tokenizer
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    prompts, meta = ["a", "alpha beta gamma"], ["https://a.org"] * 2
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    with pytest.raises(ValueError, match="streamer.*one by one"):
        generate_with_metadata_guidance(
            model, tok, prompts, meta, guidance_scale=2.0, max_new_tokens=4, do_sample=False, streamer=streamer
        )
    result = {}

    def work():
        result["texts"] = generate_with_metadata_guidance(
            model, tok, prompts[1:], meta[1:], guidance_scale=2.0, max_new_tokens=4, do_sample=False, streamer=streamer
        )

    thread = threading.Thread(target=work)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == result["texts"][0]
