"""Audit pass md41: regressions of the metadata recipe's argument checks."""

import pytest

from hf_ext.recipes import metadata_pretrain

from .test_recipe import TINY


class _PastValidation(RuntimeError):
    pass


def _stop_after_validation(monkeypatch):
    def stop(*args, **kwargs):
        raise _PastValidation("the run went past argument validation")

    monkeypatch.setattr(metadata_pretrain, "load_documents", stop)


@pytest.mark.parametrize("docs", ["0", "1", "-5"])
def test_too_few_synthetic_docs_are_refused_by_the_flag_name(tmp_path, monkeypatch, docs):
    """`--synthetic_docs 0` / `-5` failed with "synthetic_url_corpus: `num_docs` must be an int >= 1" and `1` with
    datasets' raw "With n_samples=1, test_size=0.1 ... the resulting train set will be empty": neither named the
    flag. Both came from loading the data; the check now runs with the other flags."""
    _stop_after_validation(monkeypatch)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--synthetic_docs must be at least 2 .* got -?\d"):
        metadata_pretrain.main(
            [*TINY, "--dataset", "synthetic", "--synthetic_docs", docs, "--max_steps", "2", "--output_dir", str(out)]
        )
    assert not out.exists()


def test_two_synthetic_docs_pass_validation(tmp_path, monkeypatch):
    """The smallest corpus that splits (one held-out, one training document) is accepted (it trains end to end)."""
    _stop_after_validation(monkeypatch)
    with pytest.raises(_PastValidation):
        metadata_pretrain.main(
            [*TINY, "--dataset", "synthetic", "--synthetic_docs", "2", "--max_steps", "2", "--output_dir",
             str(tmp_path / "out")]
        )  # fmt: skip


@pytest.mark.parametrize("tokenizer", ["gpt2", None])
def test_collator_and_encoder_refuse_a_tokenizer_name(tokenizer):
    """`MetadataCollator("gpt2", ...)` failed with a raw `AttributeError: 'str' object has no attribute
    'pad_token_id'` (and `MetadataEncoder("gpt2")` with one on `bos_token_id`)."""
    from hf_ext.metadata import MetadataCollator, MetadataEncoder, metadata_template

    with pytest.raises(TypeError, match="MetadataCollator: tokenizer must be a tokenizer object"):
        MetadataCollator(tokenizer, metadata_template("url"))
    with pytest.raises(TypeError, match="MetadataEncoder: tokenizer must be a tokenizer object"):
        MetadataEncoder(tokenizer)


@pytest.fixture(scope="module")
def llama(ctx_tokenizer):
    from .conftest import tiny_llama

    return tiny_llama(len(ctx_tokenizer)).eval()


def test_guided_generation_refuses_a_model_or_tokenizer_that_is_not_an_object(ctx_tokenizer, llama):
    """`generate_with_metadata_guidance(None, tok, ...)` failed with a raw `AttributeError: 'NoneType' object has no
    attribute 'device'`, and a tokenizer name with one on `bos_token_id`."""
    from hf_ext.metadata import generate_with_metadata_guidance

    with pytest.raises(TypeError, match="model must be a generative model object"):
        generate_with_metadata_guidance(None, ctx_tokenizer, ["a"], ["x"], max_new_tokens=2)
    with pytest.raises(TypeError, match="model must be a generative model object"):
        generate_with_metadata_guidance("gpt2", ctx_tokenizer, ["a"], ["x"], max_new_tokens=2)
    with pytest.raises(TypeError, match="generate_with_metadata_guidance: tokenizer must be a tokenizer object"):
        generate_with_metadata_guidance(llama, "gpt2", ["a"], ["x"], max_new_tokens=2)


@pytest.mark.parametrize("value", [-1, 2.0, "2"])
def test_guided_generation_refuses_a_bad_num_return_sequences(ctx_tokenizer, llama, value):
    """With guidance the helper repeats the unconditional prompts `num_return_sequences` times itself: -1 failed with
    torch's raw `RuntimeError: Repeats must be non-negative`, 2.0 and "2" with a raw `TypeError` from
    `repeat_interleave`."""
    from hf_ext.metadata import generate_with_metadata_guidance

    with pytest.raises(ValueError, match=f"num_return_sequences must be a positive int, got {value!r}"):
        generate_with_metadata_guidance(
            llama, ctx_tokenizer, ["a"], ["x"], guidance_scale=2.0, num_return_sequences=value, max_new_tokens=2
        )


def test_guided_generation_still_takes_several_return_sequences(ctx_tokenizer, llama):
    from hf_ext.metadata import generate_with_metadata_guidance

    texts = generate_with_metadata_guidance(
        llama, ctx_tokenizer, ["a", "b"], ["x", None], guidance_scale=2.0, num_return_sequences=3, max_new_tokens=2,
        do_sample=True,
    )  # fmt: skip
    assert len(texts) == 6
