"""Bad-input audit br18, metadata: `synthetic_url_corpus` sizes and host names."""

import math
import re

import numpy as np
import pytest

from hf_ext.metadata import synthetic_url_corpus, url_host


@pytest.mark.timeout(60)  # inf / 10**12 used to draw words forever
@pytest.mark.parametrize("name", ["words_per_domain", "shared_words", "doc_words", "num_docs"])
@pytest.mark.parametrize("value", [math.inf, 0, -1, 1.5, True, "3", None])
def test_synthetic_url_corpus_refuses_bad_counts_by_name(name, value):
    """inf never returned (an endless word draw); 0 failed in rng.choice; doc_words=-1 gave empty documents."""
    with pytest.raises(ValueError, match=f"`{name}` must be an int >= 1"):
        synthetic_url_corpus(**{"num_docs": 4, name: value})


@pytest.mark.parametrize("value", [math.inf, 1, 2.0, None])
def test_synthetic_url_corpus_refuses_bad_num_domains(value):
    with pytest.raises(ValueError, match="`num_domains` must be an int >= 2"):
        synthetic_url_corpus(num_docs=4, num_domains=value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", [{"words_per_domain": 10**12}, {"shared_words": 10**7}, {"num_domains": 10**6}])
def test_synthetic_url_corpus_refuses_more_words_than_it_can_draw(kwargs):
    """10**12 words per domain hung or ran out of memory."""
    with pytest.raises(ValueError, match="distinct words"):
        synthetic_url_corpus(num_docs=4, **kwargs)


def test_synthetic_url_corpus_many_domains_have_valid_distinct_hosts():
    """num_domains=30 made hosts such as `site{.example.org` and `site|.example.org`."""
    ds, vocab = synthetic_url_corpus(num_docs=60, num_domains=30, words_per_domain=3, shared_words=3, doc_words=4)
    hosts = {url_host(u) for u in ds["url"]}
    assert len(hosts) == 30 == len(vocab)
    assert all(re.fullmatch(r"site[a-z]+\.example\.org", h) for h in hosts), sorted(hosts)


def test_synthetic_url_corpus_default_output_unchanged_and_numpy_counts():
    ds, vocab = synthetic_url_corpus(num_docs=8, doc_words=5, seed=3)
    assert list(vocab) == ["sitea", "siteb", "sitec", "sited"]
    ds2, vocab2 = synthetic_url_corpus(num_docs=np.int64(8), doc_words=np.int64(5), seed=3)
    assert ds2["text"] == ds["text"] and vocab2 == vocab
