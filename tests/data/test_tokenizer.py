import pytest
from transformers import AutoTokenizer

from hf_ext.data import build_tokenizer


def test_round_trip_and_special_tokens(tokenizer):
    assert len(tokenizer) == 4096
    text = "def f(x):\n    return x ** 2  # naïve — ünïcode ✓\n\ttabs"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    for tok in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token):
        assert tok is not None
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


def test_reload_through_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Return the value of the named attribute of object."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.eos_token_id == tokenizer.eos_token_id and again.pad_token_id == tokenizer.pad_token_id


def test_cached_tokenizer_is_stable(tokenizer):
    again = build_tokenizer(4096)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_custom_texts_and_bad_vocab():
    tok = build_tokenizer(300, texts=["abc abc abd"] * 10)
    assert tok.decode(tok("abc")["input_ids"]) == "abc"
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(10)


def test_cache_is_keyed_by_the_corpus_it_was_trained_on(tmp_path, monkeypatch):
    """The corpus is the installation's stdlib text (cached per Python version); a tokenizer cached by one Python must
    not be reused by another whose corpus differs."""
    from hf_ext.data import corpus, tokenizer

    trained = []
    real_train = tokenizer._train_tokenizer
    monkeypatch.setattr(tokenizer, "_train_tokenizer", lambda texts, v: trained.append(1) or real_train(["ab"], v))
    docs = [{"text": "x" * 300, "url": "u", "domain": "text", "source": "s", "split": "train"}]
    monkeypatch.setattr(corpus, "build_corpus_records", lambda: [dict(d) for d in docs])
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    build_tokenizer(300)
    build_tokenizer(300)
    assert trained == [1]  # the cache is used for the same corpus
    other = corpus._corpus_cache_file().with_name("stdlib-docs-v1-py399.jsonl")
    monkeypatch.setattr(corpus, "_corpus_cache_file", lambda: other)  # what another Python version reads
    build_tokenizer(300)
    assert trained == [1, 1]
