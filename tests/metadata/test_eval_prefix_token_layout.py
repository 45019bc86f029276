"""The metadata recipe's lm-eval prompts with the URL are in the token layout of training, also in the MeCo layout.

Training encodes a document's metadata prefix (`[BOS]URL: host\\n\\n`) and its text apart (as MeCo's packing does);
lm-eval encoded the decoded prefix and the prompt as one string, and the byte-level BPE then split the prefix's
`\\n\\n` (one token in training) into two before the text, on every prompt of `hf_ext_cloze`. With
`encode_prefix_apart=True` (what the recipe passes) the model receives exactly the training ids.
"""

import copy
import types

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.evaluation.prompting import evaluate_with_prefix
from hf_ext.evaluation.tasks.utils import load_cloze
from hf_ext.metadata import MetadataEncoder, add_context_tokens, metadata_template
from hf_ext.recipes.metadata_pretrain import MetadataArguments, _prompt_prefixes

pytest.importorskip("lm_eval")


def _captured_prompts(tokenizer, prefix, apart: bool, limit: int = 4, batch_size: int = 1) -> list[list[int]]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=2048))  # fmt: skip
    model.eval()
    seen: list[list[int]] = []
    forward = model.forward

    def recording(self, input_ids=None, attention_mask=None, **kwargs):
        rows = input_ids.tolist()
        if attention_mask is not None:  # padded rows: keep the real tokens
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, attention_mask.tolist())]
        seen.extend(rows)
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.forward = types.MethodType(recording, model)
    evaluate_with_prefix(model, tokenizer, ["hf_ext_cloze"], prefix=prefix, num_fewshot=0, limit=limit,
                         batch_size=batch_size, encode_prefix_apart=apart)  # fmt: skip
    return seen


def _training_ids(tokenizer, layout: str, limit: int = 4) -> list[list[int]]:
    """What training feeds the model for the first cloze documents lm-eval scores (the test split in the order the task
    serves it, a fixed shuffle of the file's), with their URL (without the final EOS)."""
    docs = load_cloze()["test"].to_list()[:limit]
    encoder = MetadataEncoder(tokenizer, layout=layout, max_metadata_tokens=32)
    template = metadata_template("url")
    return [encoder.encode_batch([d["context"]], [template(d)])[0].input_ids[:-1] for d in docs]


@pytest.mark.parametrize("layout", ["meco", "context"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_prompts_with_the_url_start_with_the_training_ids(tokenizer, layout, batch_size):
    if layout == "context":  # a copy: the session's tokenizer stays without the context tokens
        tokenizer = copy.deepcopy(tokenizer)
        add_context_tokens(tokenizer)
    meta = MetadataArguments(layout=layout, max_metadata_tokens=32)
    prefix = _prompt_prefixes(tokenizer, metadata_template("url"), meta)[("url_conditioned", True)]
    seen = _captured_prompts(tokenizer, prefix, apart=True, batch_size=batch_size)
    for ids in _training_ids(tokenizer, layout):
        # each document's prompt (context, then a candidate continuation) begins with its training ids
        assert any(row[: len(ids)] == ids for row in seen), tokenizer.decode(ids[:40])


def test_the_meco_prefix_encoded_with_the_prompt_differs_from_training(tokenizer):
    """The control: without `encode_prefix_apart` the MeCo prompts do not start with the training ids."""
    meta = MetadataArguments(layout="meco", max_metadata_tokens=32)
    prefix = _prompt_prefixes(tokenizer, metadata_template("url"), meta)[("url_conditioned", True)]
    seen = _captured_prompts(tokenizer, prefix, apart=False)
    assert not any(row[: len(ids)] == ids for ids in _training_ids(tokenizer, "meco") for row in seen)


def test_batch_encoding_for_generation_tasks_keeps_the_prefix_apart_and_pads_left(tokenizer):
    from lm_eval.models.huggingface import HFLM

    from hf_ext.evaluation.prompting import _encode_prefixes_apart

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2))  # fmt: skip
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    prefix = tokenizer.bos_token + "URL: docs.python.org\n\n"
    _encode_prefixes_apart(lm, {prefix})
    texts = [prefix + "A short one", prefix + "And a somewhat longer prompt here", "no prefix at all"]
    expected = [tokenizer.encode(prefix, add_special_tokens=False) + tokenizer.encode(t[len(prefix) :],
                add_special_tokens=False) for t in texts[:2]]  # fmt: skip
    expected.append(tokenizer.encode(texts[2], add_special_tokens=False))
    assert expected[0] != tokenizer.encode(texts[0], add_special_tokens=False)  # encoded whole, the BPE merges
    ids, mask = lm.tok_batch_encode(texts)
    for row, m, want in zip(ids.tolist(), mask.tolist(), expected, strict=True):
        assert m == [0] * (len(row) - len(want)) + [1] * len(want)  # left padding
        assert row[len(row) - len(want) :] == want
    assert lm.tok_encode(texts[1]) == expected[1]


def test_a_template_string_prefix_is_rendered_and_encoded_apart_too(tokenizer):
    """A string prefix is a Jinja template over the document (e.g. MeCo's `URL: {{host}}`); with
    `encode_prefix_apart` each rendered prefix is encoded apart, exactly as the same prefix given as a function."""
    from lm_eval.utils import apply_template

    template = tokenizer.bos_token + "URL: {{host}}\n\n"
    as_string = _captured_prompts(tokenizer, template, apart=True)
    as_function = _captured_prompts(tokenizer, lambda doc: apply_template(template, doc), apart=True)
    whole = _captured_prompts(tokenizer, template, apart=False)
    assert as_string == as_function and as_string != whole
