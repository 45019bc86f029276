from hf_ext.data import corpus_domains, load_corpus
from hf_ext.data.corpus import build_corpus_records


def test_corpus_columns_domains_and_no_empty_documents(corpus):
    assert set(corpus.column_names) == {"text", "url", "domain", "source"}
    domains = set(corpus["domain"])
    assert len(domains) >= 5
    assert domains <= set(corpus_domains())
    assert all(t.strip() for t in corpus["text"])
    assert min(len(t) for t in corpus["text"]) >= 100
    assert all(u.startswith("https://") and ".docs.python.org/3/" in u for u in corpus["url"])
    assert len(set(corpus["url"])) == len(corpus)


def test_corpus_is_deterministic_and_heldout_is_disjoint(corpus, corpus_test):
    again = build_corpus_records()
    assert [r["url"] for r in again if r["split"] == "train"] == corpus["url"]
    assert [r["text"] for r in again if r["split"] == "train"] == corpus["text"]
    assert len(corpus_test) > 10
    assert not set(corpus["url"]) & set(corpus_test["url"])


def test_domain_filter_and_errors():
    ds = load_corpus("train", domains=["numeric", "text"])
    assert set(ds["domain"]) == {"numeric", "text"}
    both = load_corpus(None)
    assert set(both) == {"train", "test"}
    import pytest

    with pytest.raises(ValueError, match="split"):
        load_corpus("validation")
    with pytest.raises(ValueError, match="domains"):
        load_corpus("train", domains=["cooking"])


def test_domains_as_a_string_is_a_type_error():
    import pytest

    with pytest.raises(TypeError, match=r"\['text'\]"):
        load_corpus("train", domains="text")
