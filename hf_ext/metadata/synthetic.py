"""A synthetic corpus where each document's URL host determines most of its vocabulary."""

from __future__ import annotations

import random
import string

from ..utils.checks import is_int, is_real

#: Most distinct words (`shared_words + num_domains * words_per_domain`) a corpus may draw: the words are kept in
#: memory, and past the 26**4 + ... + 26**7 possible 4-7 letter words the draw would never end.
MAX_DISTINCT_WORDS = 1_000_000


def _words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _letters(i: int) -> str:
    """`a` ... `z` for 0 ... 25, then `aa`, `ab`, ... (bijective base 26): a distinct host label for every index."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = string.ascii_lowercase[r] + out
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

    Args:
        num_docs (`int`, *optional*, defaults to 2000): documents, >= 1.
        num_domains (`int`, *optional*, defaults to 4): domains, >= 2; hosts are `sitea` ... `sitez`, then `siteaa`,
            `siteab`, ... (lowercase letters only, valid host names).
        words_per_domain (`int`, *optional*, defaults to 40): words of each domain's own list, >= 1.
        shared_words (`int`, *optional*, defaults to 40): words of the list shared by all domains, >= 1.
        doc_words (`int`, *optional*, defaults to 48): words per document, >= 1.
        domain_word_prob (`float`, *optional*, defaults to 0.6): probability of a domain word, in [0, 1].
        seed (`int`, *optional*, defaults to 0): seed of the draw.

    All distinct words (`shared_words + num_domains * words_per_domain`) are at most `MAX_DISTINCT_WORDS`
    (1,000,000). A count that is not an int (`inf`, 1.5, a string, a bool) or out of range raises `ValueError` naming it.

    Returns:
        `(datasets.Dataset with text, url, domain columns, {domain: list of its specific words})`.
    """
    import datasets

    for name, value, low in (
        ("num_docs", num_docs, 1),
        ("num_domains", num_domains, 2),
        ("words_per_domain", words_per_domain, 1),
        ("shared_words", shared_words, 1),
        ("doc_words", doc_words, 1),
    ):
        if not is_int(value) or value < low:
            raise ValueError(f"synthetic_url_corpus: `{name}` must be an int >= {low}, got {value!r}.")
    if not is_real(domain_word_prob) or not 0.0 <= domain_word_prob <= 1.0:
        raise ValueError(
            f"synthetic_url_corpus: `domain_word_prob` must be a number in [0, 1], got {domain_word_prob!r}."
        )
    distinct = shared_words + num_domains * words_per_domain
    if distinct > MAX_DISTINCT_WORDS:
        raise ValueError(
            f"synthetic_url_corpus: shared_words + num_domains * words_per_domain = {distinct} distinct words, more "
            f"than the {MAX_DISTINCT_WORDS:,} this in-memory toy corpus draws; lower `words_per_domain`, "
            "`shared_words` or `num_domains`."
        )
    num_docs, num_domains, doc_words = int(num_docs), int(num_domains), int(doc_words)
    rng = random.Random(seed)
    taken: set[str] = set()
    shared = _words(rng, int(shared_words), taken)
    domains = [f"site{_letters(i)}" for i in range(num_domains)]
    vocab = {d: _words(rng, int(words_per_domain), taken) for d in domains}
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
