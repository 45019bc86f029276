"""Regression tests for compliance audit 14 (each test fails on the code before its fix)."""

import json
import os
from urllib.parse import quote

import datasets
import pytest

from hf_ext.compliance import (
    RobotsCompliance,
    RobotsTxtStore,
    annotate_compliance,
    compute_dcg,
    compute_retention_stats,
    filter_compliant,
)
from hf_ext.compliance.rfc9309 import RobotsTxt, canonical_path

datasets.disable_progress_bars()

# 1. A robots.txt that is not UTF-8 keeps each byte's value: a rule matches the URL's %XX escape of the byte ---------

LATIN1 = b"User-agent: *\nDisallow: /caf\xe9/\n"  # a French site's robots.txt saved in Latin-1
LATIN1_URL = "https://example.fr/caf%E9/menu.html"  # the site's own link (Latin-1 percent-encoded)


def test_a_latin1_rule_disallows_the_latin1_escaped_url_with_the_default_backend():
    assert canonical_path(LATIN1.decode("utf-8", "surrogateescape").split("Disallow: ")[1].strip()) == "/caf%E9/"
    assert RobotsTxt.parse(LATIN1).allowed(LATIN1_URL, "GPTBot") is False
    checker = RobotsCompliance(RobotsTxtStore.from_dict({"example.fr": LATIN1}), user_agents=["GPTBot"])
    assert checker.is_compliant(LATIN1_URL) is False
    assert checker.is_compliant_batch([LATIN1_URL, "https://example.fr/caf%C3%A9/menu.html"]) == [False, True]
    assert checker.is_compliant("https://example.fr/cafe/menu.html") is True


def test_a_latin1_rule_decides_as_googles_parser_on_the_bytes_with_the_google_backend(google_raw):
    assert google_raw(LATIN1, "GPTBot", LATIN1_URL) is False
    checker = RobotsCompliance({"example.fr": LATIN1}, user_agents=["GPTBot"], backend="google")
    assert checker.is_compliant(LATIN1_URL) is False
    assert checker.is_compliant("https://example.fr/cafe/menu.html") is True


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "gbk", "shift_jis", "euc-kr", "koi8-r"])
def test_legacy_encodings_decide_as_googles_parser_through_every_store_format(tmp_path, encoding, google_raw):
    words = ["café", "naïve", "über", "日本", "中文", "ça", "€uro", "мир", "한국"]
    rules, used = [], []
    for i, word in enumerate(words):
        try:
            raw = word.encode(encoding)
        except UnicodeEncodeError:
            continue
        used.append(raw)
        rules.append((b"Allow: /" if i % 3 == 2 else b"Disallow: /") + raw + (b"/$" if i % 2 else b"/"))
    for prefix in (b"", b"\xef\xbb\xbf", b"\xef\xef\xbb"):  # a byte order mark, and one that is not one
        body = prefix + b"User-agent: GPTBot\n" + b"\n".join(rules) + b"\nDisallow: /private/\n"
        store = RobotsTxtStore.from_dict({"x.example": body})
        stores = {"from_dict": store}
        for name in ("folder", "s.jsonl", "s.parquet"):
            stores[name] = RobotsTxtStore.load(store.save(tmp_path / f"{len(prefix)}{name}"))
            assert stores[name]["x.example"].text == store["x.example"].text, name
        for raw in [*used, "café".encode(), b"private"]:
            for url in (f"https://x.example/{quote(raw)}/", f"https://x.example/{quote(raw)}/p"):
                expected = google_raw(body, "GPTBot", url)
                assert RobotsTxt.parse(body).allowed(url, "GPTBot") is expected, (body, url)
                for name, s in stores.items():
                    for backend in ("rfc9309", "google"):
                        got = RobotsCompliance(s, user_agents=["GPTBot"], backend=backend).is_compliant(url)
                        assert got is expected, (name, backend, body, url)


def test_the_bytes_of_a_non_utf8_text_round_trip_through_every_format(tmp_path):
    body = b"\xef\xef\xbbUser-agent: *\r\nDisallow: /caf\xe9/\nDisallow: /\xff\xfe\xc3/\n# caf\xc3\xa9 \x92\n"
    store = RobotsTxtStore.from_dict({"a.example": body, "b.example": "User-agent: *\nDisallow: /ok\n"})
    text = store["a.example"].text
    assert "\udce9" in text and "\ufffd" not in text
    for name in ("folder", "s.jsonl", "s.parquet"):
        loaded = RobotsTxtStore.load(store.save(tmp_path / name))
        assert loaded["a.example"].text == text, name
        assert loaded["b.example"].text == store["b.example"].text, name
        again = RobotsTxtStore.load(loaded.save(tmp_path / f"again-{name}"))
        assert again["a.example"].text == text, name
    assert (tmp_path / "folder" / "a.example.txt").read_bytes() == b"\xef\xbb\xbf" + body[1:]  # the bytes as served
    assert json.loads((tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()[0])["robots_txt"] == text
    # a str decoded with surrogateescape is the same text as its bytes (its partial byte order mark skipped as in the
    # bytes: lo45; this used to compare body[1:]'s str, which kept the escapes of the mark the bytes skip), and the
    # store's text given back is the same text
    assert RobotsTxtStore.from_dict({"a.example": body.decode("utf-8", "surrogateescape")})["a.example"].text == text
    assert RobotsTxtStore.from_dict({"a.example": text})["a.example"].text == text


def test_a_parquet_snapshot_of_utf8_texts_keeps_its_string_column(tmp_path):
    import pyarrow.parquet as pq

    store = RobotsTxtStore.from_dict({"a.example": "User-agent: *\nDisallow: /café/\n"})
    assert str(pq.read_schema(store.save(tmp_path / "s.parquet")).field("robots_txt").type) == "string"
    store.add("b.example", LATIN1)
    assert str(pq.read_schema(store.save(tmp_path / "t.parquet")).field("robots_txt").type) == "binary"


def test_snapshots_written_with_replacement_characters_are_still_read(tmp_path):
    """Before this fix a non-UTF-8 byte was stored as U+FFFD (JSONL, Parquet string column): such snapshots load and
    decide as they did (the rule matches the escape of U+FFFD)."""
    old = "User-agent: *\nDisallow: /caf\ufffd/\n"
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"host": "example.fr", "robots_txt": old}, ensure_ascii=False) + "\n", encoding="utf-8")
    store = RobotsTxtStore.load(path)
    assert store["example.fr"].text == old
    checker = RobotsCompliance(store, user_agents=["GPTBot"])
    assert checker.is_compliant("https://example.fr/caf%EF%BF%BD/menu.html") is False
    assert checker.is_compliant(LATIN1_URL) is True


def test_the_protego_backend_still_reads_a_latin1_file():
    """Protego cannot encode a surrogate escape: it gets U+FFFD for such a byte (its decision before the fix)."""
    checker = RobotsCompliance({"example.fr": LATIN1}, user_agents=["GPTBot"], backend="protego")
    assert checker.is_compliant(LATIN1_URL) is False
    assert checker.parse_failures == {}


# 2. --train_block_size 1 and an odd head size are refused by the checks, naming the flag, before any result is removed


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--train_block_size", "1"], "--train_block_size must be >= 2"),
        (["--model_hidden_size", "12"], "--model_hidden_size must be a multiple of 8"),
        (["--model_hidden_size", "20"], "--model_hidden_size must be a multiple of 8"),
    ],
)
def test_train_flags_that_cannot_train_are_refused_before_the_earlier_results_are_removed(tmp_path, flags, match):
    from hf_ext.recipes.compliance import main

    out = tmp_path / "out"
    out.mkdir()
    for name in ("dcg_trained.json", "retention_stats.json"):
        (out / name).write_text("{}\n")
    tiny = ["--train_models", "--vocab_size", "300", "--train_steps", "1", "--continual_steps", "0"]
    with pytest.raises(ValueError, match=match):
        main([*tiny, *flags, "--output_dir", str(out)])
    assert sorted(os.listdir(out)) == ["dcg_trained.json", "retention_stats.json"]


# 3. compute_dcg refuses two different metrics (or lm-eval filters) for one task -----------------------------------


@pytest.mark.parametrize(
    "full, comp, metric, keys",
    [
        ({"t": {"acc": 0.5}}, {"t": {"perplexity": 10.0}}, None, ("'acc'", "'perplexity'")),
        (
            {"results": {"wikitext": {"word_perplexity,none": 20.0}}},
            {"results": {"wikitext": {"acc,none": 0.3}}},
            None,
            ("'word_perplexity,none'", "'acc,none'"),
        ),
        (
            {"results": {"gsm8k": {"exact_match,strict-match": 0.40}}},
            {"results": {"gsm8k": {"exact_match,flexible-extract": 0.45}}},
            None,
            ("'exact_match,strict-match'", "'exact_match,flexible-extract'"),
        ),
        (
            {"results": {"gsm8k": {"exact_match,strict-match": 0.40}}},
            {"results": {"gsm8k": {"exact_match,flexible-extract": 0.45}}},
            "exact_match",
            ("'exact_match,strict-match'", "'exact_match,flexible-extract'"),
        ),
    ],
)
def test_compute_dcg_refuses_two_different_metric_keys_for_a_task(full, comp, metric, keys):
    with pytest.raises(ValueError, match="task '.*' reports metric") as err:
        compute_dcg(full, comp, metric=metric)
    for key in keys:
        assert key in str(err.value)


def test_compute_dcg_still_pairs_one_metric_under_its_key_or_with_a_filterless_side():
    same = {"results": {"gsm8k": {"exact_match,strict-match": 0.40, "exact_match,flexible-extract": 0.5}}}
    other = {"results": {"gsm8k": {"exact_match,strict-match": 0.30, "exact_match,flexible-extract": 0.5}}}
    assert compute_dcg(same, other, metric="exact_match,strict-match").rows[0]["gap"] == pytest.approx(25.0)
    assert compute_dcg({"t": {"acc": 0.5}}, {"results": {"t": {"acc,none": 0.4}}}).rows[0]["gap"] == pytest.approx(20)
    assert compute_dcg({"t": 0.5}, {"t": {"acc": 0.4}}).rows[0]["gap"] == pytest.approx(20)


def test_compliance_gap_refuses_results_of_two_filters():
    from hf_ext.evaluation import compliance_gap

    full = {"results": {"gsm8k": {"exact_match,strict-match": 0.40}}}
    comp = {"results": {"gsm8k": {"exact_match,flexible-extract": 0.45}}}
    with pytest.raises(ValueError, match="strict-match"):
        compliance_gap(full, comp, metric="exact_match")


# 4. annotate_compliance / filter_compliant refuse clashing or empty column names ---------------------------------


@pytest.fixture
def url_dataset():
    checker = RobotsCompliance({"a.com": "User-agent: *\nDisallow: /p\n"}, user_agents=["GPTBot"])
    ds = datasets.Dataset.from_dict({"url": ["https://a.com/p", "https://a.com/ok"], "text": ["x", "y"]})
    return checker, ds


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"column": "flag", "agents_column": "flag"}, "column and agents_column are both 'flag'"),
        ({"column": "url"}, "column='url' is the url_column"),
        ({"agents_column": "url"}, "agents_column='url' is the url_column"),
        ({"agents_column": ""}, "agents_column must be a non-empty column name"),
        ({"column": ""}, "column must be a non-empty column name"),
        ({"column": None}, "column must be a non-empty column name"),
        ({"url_column": "text", "column": "text"}, "column='text' is the url_column"),
    ],
)
def test_annotate_compliance_refuses_clashing_or_empty_column_names(url_dataset, kwargs, match):
    checker, ds = url_dataset
    with pytest.raises(ValueError, match=match):
        annotate_compliance(ds, checker, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"column": "url"}, "column='url' is the url_column"),
        ({"agents_column": "url"}, "agents_column='url' is the url_column"),
        ({"column": "flag", "agents_column": "flag"}, "both 'flag'"),
    ],
)
def test_filter_compliant_refuses_the_url_column_as_a_compliance_column(url_dataset, kwargs, match):
    checker, ds = url_dataset
    with pytest.raises(ValueError, match=match):
        filter_compliant(ds, checker, **kwargs)
    kept = filter_compliant(ds, checker, column=None, agents_column=None)  # still allowed
    assert kept["url"] == ["https://a.com/ok"]


# 5. compute_dcg(tasks=[...]) refuses a repeated task ------------------------------------------------------------


def test_compute_dcg_refuses_a_repeated_task():
    full, comp = {"arc_easy": 0.50, "piqa": 0.40}, {"arc_easy": 0.40, "piqa": 0.40}
    with pytest.raises(ValueError, match=r"tasks names \['arc_easy'\] more than once"):
        compute_dcg(full, comp, tasks=["arc_easy", "piqa", "arc_easy"])
    assert compute_dcg(full, comp, tasks=["arc_easy", "piqa"]).mean_gap == pytest.approx(10.0)


# 6. compute_retention_stats checks the types of the columns it reads -------------------------------------------

_BASE = {
    "url": ["https://a.com/1", "https://a.com/2", "https://b.com/3"],
    "text": ["a b", "c d e", "f"],
    "robots_compliant": [True, False, True],
    "disallowed_user_agents": [[], ["GPTBot"], []],
}


@pytest.mark.parametrize(
    "data, kwargs, error, match",
    [
        (_BASE, {"compliant_column": "disallowed_user_agents"}, TypeError, "compliant_column='disallowed_user_agents'"),
        ({**_BASE, "robots_compliant": ["True", "False", "True"]}, {}, TypeError, "compliant_column='robots_compliant'"),
        ({**_BASE, "n": [2, -3, 1]}, {"token_column": "n"}, ValueError, "token_column='n' holds a negative"),
        ({**_BASE, "n": [2.9, 3.9, 1.0]}, {"token_column": "n"}, TypeError, "token_column='n' holds Value"),
        ({**_BASE, "disallowed_user_agents": ["", "GPTBot", ""]}, {}, TypeError, "agents_column="),
    ],
)
def test_compute_retention_stats_refuses_columns_of_the_wrong_type(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        compute_retention_stats(datasets.Dataset.from_dict(data), **kwargs)


def test_compute_retention_stats_accepts_the_annotated_types():
    stats = compute_retention_stats(datasets.Dataset.from_dict({**_BASE, "n": [2, 3, 1]}), token_column="n")
    assert (stats.overall["docs_removed"], stats.overall["tokens_removed"], stats.per_agent) == (1, 3, {"GPTBot": 1})
    # inferred as lists of null; the removed row has no record (None): a [] there contradicts robots_compliant=False
    # and is refused since 2026-12-05 (test_cd17_fixes)
    empty_agents = {**_BASE, "disallowed_user_agents": [[], None, []]}
    assert compute_retention_stats(datasets.Dataset.from_dict(empty_agents)).overall["docs_removed"] == 1


# 7. a rerun moves an earlier run's compliant_dataset/ aside ---------------------------------------------------------


def test_a_rerun_does_not_leave_the_earlier_compliant_dataset_looking_current(tmp_path):
    from hf_ext.recipes.compliance import main

    out = str(tmp_path / "out")
    common = ["--vocab_size", "300", "--output_dir", out]
    main([*common, "--save_filtered"])  # run 1: default agents
    first = len(datasets.load_from_disk(os.path.join(out, "compliant_dataset")))
    main([*common, "--user_agents", "GPTBot"])  # run 2: other agents, no --save_filtered
    assert not os.path.exists(os.path.join(out, "compliant_dataset"))
    assert len(datasets.load_from_disk(os.path.join(out, "compliant_dataset.previous"))) == first
    result = main([*common, "--user_agents", "GPTBot", "--save_filtered"])  # run 3 saves its own, replacing
    kept = result["overall"]["docs"] - result["overall"]["docs_removed"]
    assert len(datasets.load_from_disk(os.path.join(out, "compliant_dataset"))) == kept != first
    assert not os.path.exists(os.path.join(out, "compliant_dataset.previous"))


def test_retention_stats_of_an_empty_dataset_with_null_typed_columns():
    """`Dataset.from_dict` of empty lists types every column null: nothing to misread, so the type checks let it pass
    (they refused it, where the stats of an empty dataset were computed before); rows of a null column are refused."""
    from datasets import Dataset

    empty = Dataset.from_dict({"url": [], "robots_compliant": [], "num_tokens": [], "disallowed_user_agents": []})
    stats = compute_retention_stats(empty, token_column="num_tokens")
    assert stats.overall["docs"] == 0 and stats.per_domain == []
    with pytest.raises(TypeError, match="compliant_column"):
        compute_retention_stats(
            Dataset.from_dict({"url": ["https://a.com/"], "robots_compliant": [None], "num_tokens": [3]}),
            token_column="num_tokens",
            agents_column=None,
        )
