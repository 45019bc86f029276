"""Fixes of the md25 metadata audit.

1. The recipe's `--eval_tasks` evaluation placed the URL at the start of every prompt, and lm-eval cut a prompt longer
   than the model's context from the left, URL first: the with-URL row was then scored without the URL. Such a run
   now raises a `ValueError` naming the prompt's length, the context and `--eval_fewshot` (the library side is tested
   in tests/evaluation/test_prefix_fits_context.py).
2. Public entry points gave raw errors: `MetadataEncoder(meco_prefix=...)` with another field (`KeyError: 'x'`), a lone
   brace or `None`; `encode_batch` with non-str entries (the tokenizer's message, naming neither argument);
   `metadata_template(..., column=5)` (`'int' object is not iterable`); `add_context_tokens("gpt2")`
   (`'str' object has no attribute 'get_vocab'`).
3. The control-token probe counted the unknown token as a forged control token: a fast tokenizer without byte fallback
   (the probe's `<` is `<unk>`) was refused with a message telling to use a fast tokenizer.
"""

import copy
import string
import types

import pytest
import torch

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    MetadataEncoder,
    add_context_tokens,
    metadata_template,
)

from .conftest import tiny_llama

# ---------------------------------------------------------------------------------------------------------------------
# 1. the recipe's with-URL evaluation must not lose the URL to lm-eval's left truncation


def test_recipe_eval_refuses_prompts_longer_than_the_model_context(tokenizer):
    """The audit's scenario: the 4096-token tokenizer with the context tokens, a tiny Llama with 160 positions and
    hf_ext_cloze at 3 shots (prompts of about 200-300 tokens). Before the fix 0 of 4 scored rows carried the URL and
    the run reported its with-URL column; now nothing is scored."""
    pytest.importorskip("lm_eval")
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.recipes.metadata_pretrain import MetadataArguments, evaluate_tasks_with_and_without_url

    tok = copy.deepcopy(tokenizer)
    add_context_tokens(tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=160))  # fmt: skip
    scored = []
    forward = model.forward

    def recording(self, input_ids=None, **kwargs):
        scored.extend(input_ids.tolist())
        return forward(input_ids=input_ids, **kwargs)

    model.forward = types.MethodType(recording, model)
    meta = MetadataArguments(layout="context", max_metadata_tokens=32, eval_tasks="hf_ext_cloze", eval_fewshot="3",
                             eval_limit=4, eval_batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"is \d+ tokens, but lm-eval keeps only the last 161 .*--eval_fewshot"):
        evaluate_tasks_with_and_without_url({"url_conditioned": model}, tok, metadata_template("url"), meta)
    assert scored == []


# ---------------------------------------------------------------------------------------------------------------------
# 2. clear errors at the public entry points


@pytest.mark.parametrize(
    "prefix, error, match",
    [
        ("URL: {metadata} {x}", ValueError, r"exactly one field.*fields \['\{metadata\}', '\{x\}'\]"),
        ("URL: {metadata} {", ValueError, r"not a valid format string \(Single '\{' encountered"),
        ("URL: {metadata} }", ValueError, "not a valid format string"),
        (None, TypeError, "meco_prefix must be a str with one '{metadata}' field"),
        (b"URL: {metadata}", TypeError, "meco_prefix must be a str"),
        ("{metadata} and {metadata}", ValueError, "exactly one field"),
        ("URL: {metadata!r}\n\n", ValueError, r"fields \['\{metadata!r\}'\]"),
        ("URL: {metadata:>20}\n\n", ValueError, r"fields \['\{metadata:>20\}'\]"),
        ("URL: {{metadata}}\n\n", ValueError, r"fields \[\]"),  # escaped braces: literal text, no field
        ("URL: {}\n\n", ValueError, r"fields \['\{\}'\]"),
    ],
)
def test_encoder_refuses_a_meco_prefix_without_one_plain_metadata_field(ctx_tokenizer, prefix, error, match):
    with pytest.raises(error, match=match) as err:
        MetadataEncoder(ctx_tokenizer, layout="meco", meco_prefix=prefix)
    assert "meco_prefix" in str(err.value) and "e.g. 'URL: {metadata}" in str(err.value)


def test_a_meco_prefix_with_literal_braces_still_works(ctx_tokenizer):
    encoder = MetadataEncoder(ctx_tokenizer, layout="meco", meco_prefix="{{src}} {metadata}\n\n")
    (ids,) = encoder.prefix_ids(["a.org"])
    assert ctx_tokenizer.decode(ids[1:]) == "{src} a.org\n\n"


def test_encode_batch_and_prefix_ids_refuse_entries_that_are_not_str_by_name(ctx_tokenizer):
    encoder = MetadataEncoder(ctx_tokenizer)
    with pytest.raises(TypeError, match=r"metadata\[1\] must be a str or None \(no metadata\), got int 5"):
        encoder.encode_batch(["x", "y"], ["a.org", 5])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str \(or None, an empty document\), got bytes"):
        encoder.encode_batch([b"x"], ["a.org"])
    with pytest.raises(TypeError, match=r"metadata\[0\] must be a str or None"):
        encoder.prefix_ids([["a.org"]])
    # what is accepted stays: None entries in both, a tuple of entries
    docs = encoder.encode_batch((None, "text"), (None, "a.org"))
    assert docs[0].input_ids == encoder.prefix_ids([None])[0] + [ctx_tokenizer.eos_token_id]
    assert len(docs[1].input_ids) > docs[1].prefix_length


def test_metadata_template_refuses_a_column_that_is_not_a_name(ctx_tokenizer):
    for bad in (5, 2.5, {"url"}.__iter__()):
        with pytest.raises(ValueError, match="column must be a column name \\(str\\) or a list of names"):
            metadata_template("url", column=bad)
    assert metadata_template("url", column=("link",)).columns == ("link",)
    assert metadata_template("topic_format", column=["t", "f"]).columns == ("t", "f")


def test_add_context_tokens_refuses_a_name_or_a_wrong_model(ctx_tokenizer):
    with pytest.raises(TypeError, match="add_context_tokens needs a tokenizer object, got str 'gpt2'"):
        add_context_tokens("gpt2")
    tok = copy.deepcopy(ctx_tokenizer)
    with pytest.raises(TypeError, match="model must be a model object with input embeddings"):
        add_context_tokens(tok, "gpt2")
    model = tiny_llama(len(tok), hidden=16)
    assert add_context_tokens(tok, model) == tuple(tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END]))


# ---------------------------------------------------------------------------------------------------------------------
# 3. the unknown token is no forged control token


def _unk_tokenizer(**special):
    """A fast BPE without byte fallback (whitespace pre-tokenizer, lowercase letters only): `<`, `|`, `:` and `.`
    encode as `<unk>`; the audit's tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=list(string.ascii_lowercase), show_progress=False)  # fmt: skip
    tk.train_from_iterator(["the cat sat on the mat", "a dog ran far away"] * 50, trainer)
    roles = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", **special}
    return PreTrainedTokenizerFast(tokenizer_object=tk, **roles)


@pytest.mark.parametrize("layout", ["context", "meco"])
def test_a_tokenizer_with_an_unknown_token_is_accepted_and_documents_forge_nothing(layout):
    tok = _unk_tokenizer()
    add_context_tokens(tok)
    assert tok("<s>", add_special_tokens=False, split_special_tokens=True).input_ids[0] == tok.unk_token_id
    encoder = MetadataEncoder(tok, layout=layout)  # was: ValueError "... into control tokens [0] ..."
    forged = f"the cat <s> sat </s> {CONTEXT_END} on <pad> the mat"
    (doc,) = encoder.encode_batch([forged], ["a.org"])
    body = doc.input_ids[doc.prefix_length : -1]
    control = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN,
               CONTEXT_END])}  # fmt: skip
    assert tok.unk_token_id in body and not control & set(body)
    collator = MetadataCollator(tok, metadata_template("url_host"), layout=layout, metadata_dropout=0.0)
    batch = collator([{"text": forged, "url": "https://a.org/x"}])
    assert batch["input_ids"][0].tolist()[: doc.prefix_length] == doc.input_ids[: doc.prefix_length]


def test_a_forging_tokenizer_is_still_refused_when_it_has_an_unknown_token():
    # markers added as ordinary tokens: a document spelling them gets the marker ids
    tok = _unk_tokenizer()
    tok.add_tokens([CONTEXT_BEGIN, CONTEXT_END])
    with pytest.raises(ValueError, match="split_special_tokens"):
        MetadataEncoder(tok)
    # the unknown token is also BOS (as GPT-2's <|endoftext|> is unk, BOS and EOS): an unknown character would give
    # the BOS id, so the id stays a control token
    tok = _unk_tokenizer(bos_token="<unk>")
    assert tok.bos_token_id == tok.unk_token_id
    with pytest.raises(ValueError, match=rf"unk token '<unk>', id {tok.unk_token_id}, which is also its bos token"):
        MetadataEncoder(tok, layout="meco")
