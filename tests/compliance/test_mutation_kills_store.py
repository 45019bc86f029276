"""The robots.txt snapshot store: byte-order marks, RFC 9309 refetch rules, folder metadata, and the statistics and
dataset helpers built on it, each checked against a hand-written expectation."""

import itertools
import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.store import RobotsRecord

BODY = "User-agent: *\nDisallow: /private\n"


def test_a_refetch_with_the_same_date_replaces_the_stored_record():
    """Only a fetch dated *before* the stored one is ignored: a second fetch on the same day (date-only stamps, or the
    same instant written with another offset) replaces the record when it applies after it at that instant (a body
    after a 4xx, in either order: st36 F1; until 2026-12-06 the fetch applied last won)."""
    for first, second in itertools.permutations([(BODY, 200), (None, 404)]):
        store = RobotsTxtStore()
        store.update_from_fetch(RobotsRecord("a.com", first[0], "2025-03-01", first[1]))
        new = store.update_from_fetch(RobotsRecord("a.com", second[0], "2025-03-01", second[1]))
        assert new.status == 200 and store["a.com"].text == BODY
    new = store.update_from_fetch(RobotsRecord("a.com", None, "2025-03-01T00:00:01", 404))
    assert new.status == 404 and store["a.com"].text is None
    store.update_from_fetch(RobotsRecord("b.com", BODY, "2025-03-01T12:00:00+00:00", 200))
    new = store.update_from_fetch(RobotsRecord("b.com", "User-agent: *\nAllow: /\n", "2025-03-01T14:00:00+02:00", 200))
    assert store["b.com"].text == "User-agent: *\nAllow: /\n" and new is store["b.com"]


def test_dates_that_are_not_iso_compare_as_text():
    """A non-ISO fetch date is compared as a string: an earlier one does not replace, a later one does."""
    store = RobotsTxtStore()
    store.update_from_fetch(RobotsRecord("a.com", BODY, "week 07", 200))
    store.update_from_fetch(RobotsRecord("a.com", None, "week 05", 404))
    assert store["a.com"].text == BODY
    store.update_from_fetch(RobotsRecord("a.com", None, "week 09", 404))
    assert store["a.com"].text is None


def test_folder_metadata_applies_to_a_host_file_named_in_capitals(tmp_path):
    """A hand-made folder whose file is `A.COM.txt` gets the status recorded for `a.com` in `_snapshot.json`."""
    (tmp_path / "A.COM.txt").write_text(BODY)
    (tmp_path / "_snapshot.json").write_text(
        json.dumps({"hosts": {"a.com": {"status": 200, "fetched_at": "2025-05-05"}}})
    )
    store = RobotsTxtStore.load(tmp_path)
    assert list(store) == ["a.com"]
    assert store["a.com"].status == 200 and store["a.com"].fetched_at == "2025-05-05"


# Retention statistics ---------------------------------------------------------------------------------------------
def _annotated(urls, texts):
    import datasets

    from hf_ext.compliance import annotate_compliance

    robots = {h: "User-agent: GPTBot\nDisallow: /drop/\n" for h in ("a.org", "b.org", "c.org")}
    return annotate_compliance(datasets.Dataset.from_dict({"url": urls, "text": texts}), RobotsCompliance(robots))


def test_domains_are_ranked_by_removed_tokens_not_removed_documents():
    """`per_domain` is sorted by removed tokens, descending (ties by name): a domain losing one long document ranks
    above one losing three short ones."""
    from hf_ext.compliance import compute_retention_stats

    urls = ["https://a.org/drop/1", "https://a.org/drop/2", "https://a.org/drop/3", "https://b.org/drop/1",
            "https://c.org/keep", "https://c.org/drop/x"]  # fmt: skip
    texts = ["w", "w", "w", " ".join(["w"] * 10), "w w", "w w"]
    stats = compute_retention_stats(_annotated(urls, texts))
    order = [(r["domain"], r["docs_removed"], r["tokens_removed"]) for r in stats.per_domain]
    assert order == [("b.org", 1, 10), ("a.org", 3, 3), ("c.org", 1, 2)]


def test_tokenizer_counts_exclude_the_special_tokens_a_tokenizer_adds():
    """Token counts are the document's own tokens: no [CLS]/[SEP] (BOS/EOS) that the tokenizer adds by default."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from hf_ext.compliance import compute_retention_stats

    urls = ["https://a.org/drop/1", "https://a.org/keep", "https://b.org/k"]
    texts = ["alpha beta gamma", "beta", "gamma alpha alpha beta"]
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "alpha": 3, "beta": 4, "gamma": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    assert len(tok("beta")["input_ids"]) == 3  # this tokenizer adds two special tokens by default
    stats = compute_retention_stats(_annotated(urls, texts), tokenizer=tok)
    assert stats.overall["tokens"] == 3 + 1 + 4 and stats.overall["tokens_removed"] == 3


def test_only_the_first_500_kib_of_a_fetched_body_is_stored():
    from hf_ext.compliance.store import record_from_response

    body = b"User-agent: *\nDisallow: /a\n" + (b"#" * 99 + b"\n") * 6000  # 600,027 bytes in lines of 100
    record = record_from_response("a.com", 200, body, "2025-01-01")
    kept = 27 + 100 * ((500 * 1024 - 27) // 100)  # whole lines: the one the limit cuts is dropped (since 2026-12-04)
    assert len(record.text.encode()) == kept and body.startswith(record.text.encode())


@pytest.mark.parametrize("status", [300, 301, 404])
def test_a_redirect_or_client_error_body_is_not_the_robots_txt(status):
    """Only 2xx bodies are robots.txt files; 3xx and 4xx are recorded without text (RFC 9309: unavailable)."""
    from hf_ext.compliance.store import record_from_response

    record = record_from_response("a.com", status, b"User-agent: *\nDisallow: /\n", "2025-01-01")
    assert record.text is None and record.status_class == "unavailable"
    assert RobotsCompliance(RobotsTxtStore([record]), user_agents=["GPTBot"]).is_compliant("https://a.com/x")


def test_retention_domains_are_normalised_hosts():
    """Without a domain column the domain is the URL's normalised host: case and a default port do not split it."""
    from hf_ext.compliance import compute_retention_stats

    urls = ["https://WWW.A.org:443/drop/1", "https://www.a.org/keep", "http://www.A.ORG/x"]
    stats = compute_retention_stats(_annotated(urls, ["w w", "w", "w w w"]))
    assert [(r["domain"], r["docs"], r["docs_removed"], r["tokens"]) for r in stats.per_domain] == [
        ("www.a.org", 3, 1, 6)
    ]
