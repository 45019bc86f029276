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
