"""Mutation run 19 (evaluation): the packaged tasks' `domains` metadata, as `parse_domains` documents it.

- `"a,b"` names the same domains as `"a+b"` (and as a list), and restricts the loaders' test items the same way.
- `None` or an empty value (`""`, only separators, an empty list) means all items: `parse_domains` gives `None` and the
  loaders keep the whole test split.
- `encode_prefix_apart` (lm-eval HFLM): a prompt is split after the longest prefix it starts with; a prefixed prompt
  longer than lm-eval's `left_truncate_len` is refused (it lost its prefix first), and one without a prefix keeps its
  last tokens.
"""

import pytest

from hf_ext.evaluation.tasks.utils import known_domains, load_cloze, load_domain, parse_domains


def test_comma_and_plus_separated_domains_are_the_same():
    a, b = known_domains()[3], known_domains()[0]
    assert parse_domains(f"{a},{b}") == parse_domains(f"{a}+{b}") == parse_domains([a, b]) == sorted([a, b])
    assert parse_domains(f" {a} , {b} ") == sorted([a, b])
    for load in (load_domain, load_cloze):
        comma, plus = load(domains=f"{a},{b}")["test"], load(domains=f"{a}+{b}")["test"]
        assert 0 < len(comma) < len(load()["test"])
        assert comma.to_list() == plus.to_list()


@pytest.mark.parametrize("empty", [None, "", " + ", ",", [], ()])
def test_an_empty_domains_value_means_all_items(empty):
    assert parse_domains(empty) is None
    for load in (load_domain, load_cloze):
        assert load(domains=empty)["test"].to_list() == load()["test"].to_list()


# ------------------------------------------------------------------------- encode_prefix_apart (G10: v10, v11)
def _hflm_apart(tokenizer, prefixes):
    """An lm-eval HFLM over a tiny Llama with `_encode_prefixes_apart(prefixes)`, and its original `tok_encode`."""
    pytest.importorskip("lm_eval")
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.evaluation.prompting import _encode_prefixes_apart

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2))  # fmt: skip
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    original = lm.tok_encode
    _encode_prefixes_apart(lm, set(prefixes))
    return lm, original


def test_the_longest_matching_prefix_is_encoded_apart(small_tokenizer):
    """Prefixes rendered from a template without a separator can be string prefixes of one another (`URL: re`,
    `URL: return`): a prompt is split after the longest one it starts with."""
    short, long = "URL: re", "URL: return"
    lm, original = _hflm_apart(small_tokenizer, {short, long})
    text = long + " page about sockets"
    want = original(long) + small_tokenizer.encode(text[len(long) :], add_special_tokens=False)
    after_short = original(short) + small_tokenizer.encode(text[len(short) :], add_special_tokens=False)
    assert want != after_short  # the two splits give different ids, so the test tells them apart
    assert lm.tok_encode(text) == want
    # a prompt of the shorter prefix only is split after it
    other = short + ".x page"
    assert lm.tok_encode(other) == original(short) + small_tokenizer.encode(".x page", add_special_tokens=False)


def test_a_prefixed_prompt_is_not_left_truncated_and_others_keep_their_end(small_tokenizer):
    """lm-eval's `left_truncate_len` (a generation prompt longer than the model's length) drops tokens from the left.
    A prompt that starts with a prefix would lose the prefix first: it is refused (md25; until then it was cut and
    kept its end). A prompt without a prefix is still cut by lm-eval, keeping its end, also next to a prefixed prompt
    that fits in the same batch."""
    prefix = "URL: docs.python.org\n\n"
    lm, original = _hflm_apart(small_tokenizer, {prefix})
    text = prefix + "a long context before the question; what does socket.bind do?"
    whole = original(prefix) + small_tokenizer.encode(text[len(prefix) :], add_special_tokens=False)
    assert len(whole) > 8
    assert lm.tok_encode(text) == whole
    assert lm.tok_encode(text, left_truncate_len=len(whole)) == whole  # fits exactly
    with pytest.raises(ValueError, match=f"is {len(whole)} tokens, but lm-eval keeps only the last 5 "):
        lm.tok_encode(text, left_truncate_len=5)
    with pytest.raises(ValueError, match=f"is {len(whole)} tokens"):
        lm.tok_batch_encode([text, prefix + "short"], left_truncate_len=5)
    plain = text[len(prefix) :]  # no prefix: lm-eval's own cut, the question survives
    assert lm.tok_encode(plain, left_truncate_len=5) == original(plain)[-5:]
    short = prefix + "short"
    ids, mask = lm.tok_batch_encode([plain, short], left_truncate_len=len(lm.tok_encode(short)))
    width = len(lm.tok_encode(short))
    assert ids.tolist()[0] == original(plain)[-width:] and mask.tolist()[0] == [1] * width
    assert ids.tolist()[1] == lm.tok_encode(short)
