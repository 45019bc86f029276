"""Audit pass md43: clear errors for a `generation_config` that is no `GenerationConfig` and a non-int `num_beams`
in `generate_with_metadata_guidance` (both failed with a raw error from the function's own code)."""

import pytest
from transformers import GenerationConfig

from hf_ext.metadata import generate_with_metadata_guidance

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def model(ctx_tokenizer):
    return tiny_llama(len(ctx_tokenizer), hidden=32).eval()


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_dict_generation_config_is_refused_by_name(model, ctx_tokenizer, scale):
    """A dict failed with "AttributeError: 'dict' object has no attribute 'pad_token_id'" (our settings are set on
    a copy of the config)."""
    with pytest.raises(TypeError, match=r"generation_config must be a transformers GenerationConfig, got a dict"):
        generate_with_metadata_guidance(
            model,
            ctx_tokenizer,
            ["a", "b c d"],
            "x.org",
            guidance_scale=scale,
            generation_config={"max_new_tokens": 2},
        )


def test_a_generation_config_object_still_works(model, ctx_tokenizer):
    texts = generate_with_metadata_guidance(
        model, ctx_tokenizer, ["a", "b c d"], "x.org", guidance_scale=2.0,
        generation_config=GenerationConfig(max_new_tokens=2, do_sample=False),
    )  # fmt: skip
    assert len(texts) == 2


@pytest.mark.parametrize("beams", ["2", 2.5])
def test_a_num_beams_that_is_no_int_is_refused_by_name(model, ctx_tokenizer, beams):
    """`num_beams="2"` failed with "TypeError: '>' not supported between instances of 'str' and 'int'"."""
    with pytest.raises(ValueError, match=r"num_beams must be a positive int, got"):
        generate_with_metadata_guidance(
            model, ctx_tokenizer, "a", "x.org", guidance_scale=2.0, num_beams=beams, max_new_tokens=2
        )


def test_int_num_beams_keep_their_refusal_and_one_beam_generates(model, ctx_tokenizer):
    with pytest.raises(ValueError, match=r"does not work with num_beams > 1"):
        generate_with_metadata_guidance(model, ctx_tokenizer, "a", "x.org", guidance_scale=2.0, num_beams=2)
    assert len(generate_with_metadata_guidance(
        model, ctx_tokenizer, "a", "x.org", guidance_scale=2.0, num_beams=1, max_new_tokens=2, do_sample=False
    )) == 1  # fmt: skip
