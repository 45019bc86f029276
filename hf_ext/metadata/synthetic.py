"""A synthetic corpus where each document's URL host determines most of its vocabulary."""

from __future__ import annotations

import random
import string


def _words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def synthetic_url_corpus(
    num_docs: int = 2000,
    num_domains: int = 4,
    words_per_domain: int = 40,
    shared_words: int = 40,
    doc_words: int = 48,
    domain_word_prob: float = 0.6,
    seed: int = 0,
):
    """Documents whose host (`https://<domain>.example.org/...`) decides which words they use.

    Each word of a document comes from its domain's own word list with probability `domain_word_prob`, otherwise
    from a list shared by all domains. A model that sees the URL knows the domain from the first token; one that
    does not must infer it from the words so far, so URL conditioning should lower the loss sooner.

    Returns:
        `(datasets.Dataset with text, url, domain columns, {domain: list of its specific words})`.
    """
    import datasets

    if num_docs < 1 or num_domains < 2 or not 0.0 <= domain_word_prob <= 1.0:
        raise ValueError("need num_docs >= 1, num_domains >= 2 and domain_word_prob in [0, 1].")
    rng = random.Random(seed)
    taken: set[str] = set()
    shared = _words(rng, shared_words, taken)
    domains = [f"site{chr(ord('a') + i)}" for i in range(num_domains)]
    vocab = {d: _words(rng, words_per_domain, taken) for d in domains}
    rows = {"text": [], "url": [], "domain": []}
    for i in range(num_docs):
        d = domains[i % num_domains]
        words = [
            rng.choice(vocab[d]) if rng.random() < domain_word_prob else rng.choice(shared) for _ in range(doc_words)
        ]
        rows["text"].append(" ".join(words))
        rows["url"].append(f"https://{d}.example.org/page/{i}")
        rows["domain"].append(d)
    return datasets.Dataset.from_dict(rows), vocab
