"""Scale-out audit fixes (2026-12-02): folder snapshots saved whole, recipe checks before deleting results, filter
options beside a ready checker, fetch dates compared as instants, UTS 46 host names, dot segments, host spellings."""

import json
import types

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.robots import normalize_host
from hf_ext.compliance.store import RobotsRecord

DISALLOW_ALL = "User-agent: *\nDisallow: /\n"


# F1 -----------------------------------------------------------------------------------------------------------------
def _snapshot(store):
    return {h: (r.text, r.fetched_at, r.status, r.error) for h, r in store._records.items()}


def test_folder_save_over_an_older_snapshot_reloads_exactly_what_was_saved(tmp_path):
    """The old save wrote only the new <host>.txt files: a.example (now recorded without robots.txt) and b.example
    (removed) came back with their old rules after a reload."""
    folder = tmp_path / "snap"
    RobotsTxtStore.from_dict({"a.example": DISALLOW_ALL, "b.example": DISALLOW_ALL}, fetched_at="2025-01-01").save(
        folder
    )
    new = RobotsTxtStore.from_dict(
        {"a.example": None, "c.example": "User-agent: GPTBot\nDisallow: /x\n"}, "2025-06-01"
    )
    new.save(folder)
    loaded = RobotsTxtStore.load(folder)
    assert _snapshot(loaded) == _snapshot(new)
    assert RobotsCompliance(loaded).is_compliant("https://a.example/page")
    assert sorted(p.name for p in folder.iterdir()) == ["_snapshot.json", "c.example.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["snap"]  # no temporary or old folder left behind


def test_failed_folder_save_leaves_the_old_snapshot_untouched(tmp_path, monkeypatch):
    """The old save wrote the new host files first and _snapshot.json last: a failure in between left new rules
    with old metadata."""
    import hf_ext.compliance.store as store_mod

    folder = tmp_path / "snap"
    old = RobotsTxtStore()
    old.add("a.example", "User-agent: *\nDisallow: /old\n", "2025-01-01", 200)
    old.add("b.example", None, "2025-01-01", 503)
    old.save(folder)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "json", types.SimpleNamespace(dumps=boom, loads=json.loads))
    new = RobotsTxtStore()
    new.add("a.example", "User-agent: *\nDisallow: /new\n", "2025-06-01", 200)
    with pytest.raises(OSError, match="disk full"):
        new.save(folder)
    monkeypatch.undo()
    assert _snapshot(RobotsTxtStore.load(folder)) == _snapshot(old)
    assert [p.name for p in tmp_path.iterdir()] == ["snap"]


def test_folder_save_keeps_the_users_files_and_writes_through_symlinks_and_dot(tmp_path, monkeypatch):
    """The save writes into the folder with a manifest (`files` in _snapshot.json) that `load` follows: the user's
    own files (also `.txt`) are neither read as hosts nor removed, a symlinked folder is updated in its target, `.`
    works, and a hand-made folder without a manifest reloads exactly what was saved."""
    folder = tmp_path / "snap"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    (folder / "notes.md").write_text("mine too")
    store = RobotsTxtStore.from_dict({"a.example": DISALLOW_ALL}, fetched_at="2025-01-01")
    store.save(folder)
    assert (folder / "todo.txt").read_text() == "mine" and (folder / "notes.md").read_text() == "mine too"
    assert _snapshot(RobotsTxtStore.load(folder)) == _snapshot(store)
    # a hand-made snapshot (no manifest) with a host that the new snapshot drops
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "old.example.txt").write_text(DISALLOW_ALL)
    store.save(legacy)
    assert _snapshot(RobotsTxtStore.load(legacy)) == _snapshot(store)
    # through a symlink: the target is the snapshot that changes
    target = tmp_path / "2025-01"
    RobotsTxtStore.from_dict({"x.example": DISALLOW_ALL, "y.example": None}).save(target)
    (tmp_path / "latest").symlink_to(target, target_is_directory=True)
    store.save(tmp_path / "latest")
    assert (tmp_path / "latest").is_symlink()
    assert _snapshot(RobotsTxtStore.load(target)) == _snapshot(store)
    # the current directory
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    store.save(".", format="folder")
    assert _snapshot(RobotsTxtStore.load(here)) == _snapshot(store)


def test_add_refuses_text_with_lone_surrogates(tmp_path):
    """Such a text was accepted in memory but no format could save it (UnicodeEncodeError on every save). A surrogate
    escape of a byte (errors="surrogateescape", U+DC80..U+DCFF) is a byte that is not UTF-8: kept, and every format
    saves it (see test_cp14_fixes.py); any other lone surrogate stands for no byte and is refused."""
    store = RobotsTxtStore()
    for text in ("User-agent: *\nDisallow: /caf\ud800\n", "User-agent: *\nDisallow: /caf\udc41\n"):
        with pytest.raises(ValueError, match="lone surrogate"):
            store.add("z.example", text)
    text = b"User-agent: *\nDisallow: /caf\xe9\n".decode("utf-8", errors="surrogateescape")
    store.add("z.example", text)
    assert store["z.example"].text == text
    store.add("y.example", text.encode("utf-8", "surrogateescape"))  # the bytes give the same text
    assert store["y.example"].text == text
    for name in ("s.jsonl", "s.parquet", "s"):
        store.save(tmp_path / name)
        assert _snapshot(RobotsTxtStore.load(tmp_path / name)) == _snapshot(store)


# F4 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, match",
    [
        ({"user_agents": "GPTBot,/x"}, "no product token"),
        ({"robots": "dup.jsonl"}, "recorded twice"),
        ({"url_column": "link"}, "--url_column='link' is not a column"),
        ({"text_column": "body"}, "--text_column='body' is not a column"),
    ],
)
def test_recipe_input_errors_keep_the_previous_results(tmp_path, flags, match):
    """These failed only after clear_previous_results had deleted the earlier run's result files."""
    from hf_ext.recipes.compliance import ComplianceArguments, run

    (tmp_path / "dup.jsonl").write_text(
        json.dumps({"host": "a.example", "robots_txt": None})
        + "\n"
        + json.dumps({"host": "A.EXAMPLE:80", "robots_txt": None})
        + "\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "retention_stats.json").write_text('{"previous": true}')
    if "robots" in flags:
        flags = {"robots": str(tmp_path / flags["robots"])}
    with pytest.raises(ValueError, match=match):
        run(ComplianceArguments(output_dir=str(out), **flags))
    assert (out / "retention_stats.json").read_text() == '{"previous": true}'


def test_datatrove_engine_replaces_existing_compliance_columns_like_datasets_engine():
    """--engine datatrove failed with "duplicated columns" where --engine datasets replaced the columns."""
    pytest.importorskip("datatrove")
    import datasets

    from hf_ext.compliance import annotate_compliance
    from hf_ext.recipes.compliance import ComplianceArguments, _annotate_with_datatrove

    ds = datasets.Dataset.from_dict(
        {
            "url": ["https://a.example/x", "https://b.example/y"],
            "text": ["one", "two"],
            "robots_compliant": [False, True],
            "disallowed_user_agents": [["old"], []],
        }
    )
    checker = RobotsCompliance({"b.example": DISALLOW_ALL}, user_agents=["GPTBot", "*"])
    via_datatrove = _annotate_with_datatrove(ds, checker, ComplianceArguments())
    via_datasets = annotate_compliance(ds, checker)
    assert via_datatrove["robots_compliant"] == via_datasets["robots_compliant"] == [True, False]
    assert via_datatrove["disallowed_user_agents"] == via_datasets["disallowed_user_agents"] == [[], ["GPTBot", "*"]]


# F5 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{"status_policy": "paper"}, {"host_fallback": "exact"}, {"user_agents": ["GPTBot"]}, {"status_policy": "bogus"}],
)
def test_filter_refuses_options_beside_a_ready_checker(options):
    """They were silently ignored: the checker decided with its own settings."""
    pytest.importorskip("datatrove")
    from hf_ext.compliance import RobotsTxtFilter

    checker = RobotsCompliance({"a.example": None})
    with pytest.raises(ValueError, match=f"also .*{next(iter(options))}.*Set them on the RobotsCompliance"):
        RobotsTxtFilter(checker, **options)
    RobotsTxtFilter(checker, user_agents=checker.user_agents)  # the checker's own agents: nothing ignored
    if options != {"status_policy": "bogus"}:  # with a store the options build the step's checker
        RobotsTxtFilter(RobotsTxtStore.from_dict({"a.example": None}), **options)


# F7 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stored, older",
    [("2025-01-01T23:30:00+00:00", "2025-01-02T01:00:00+02:00"), ("2025-01-02T00:00:00", "2025-01-02T01:00:00+02:00")],
)
def test_update_from_fetch_compares_dates_as_instants(stored, older):
    """Compared as strings, the older fetch (later text, earlier instant) replaced the newer record."""
    store = RobotsTxtStore()
    store.update_from_fetch(RobotsRecord("a.example", DISALLOW_ALL, stored, 200))
    kept = store.update_from_fetch(RobotsRecord("a.example", "User-agent: *\nAllow: /\n", older, 200))
    assert kept.fetched_at == stored and "Disallow" in kept.text
    newer = store.update_from_fetch(RobotsRecord("a.example", None, "2025-01-02T03:00:00+02:00", 404))
    assert newer.status_class == "unavailable"  # 01:00 UTC on Jan 2: after both stored dates


# F2 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host, key",
    [("faß.de", "xn--fa-hia.de"), ("βόλος.com", "xn--nxasmm1c.com"), ("ශ්\u200dරී.com", "xn--10cl1a0b660p.com")],
)
def test_hosts_are_converted_with_uts46_non_transitional(host, key):
    """IDNA 2003 gave fass.de, xn--nxasmq6b.com and xn--10cl1a0b.com: other domains than browsers fetch."""
    assert normalize_host(f"https://{host}/article") == key


def test_faß_de_pages_follow_their_own_robots_txt():
    checker = RobotsCompliance({"xn--fa-hia.de": DISALLOW_ALL, "fass.de": None})
    assert not checker.is_compliant("https://faß.de/article")
    assert checker.is_compliant("https://FASS.de/article")


# F3 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/pub/../private/a",
        "https://example.com/./private/a",
        "https://example.com/pub/%2e%2e/private/a",
    ],
)
def test_dot_segments_are_removed_by_every_backend(backend, url):
    """rfc9309 and protego matched the path as written (allowed); Google's parser (and an HTTP client) reads
    /private/a (disallowed)."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    checker = RobotsCompliance({"example.com": "User-agent: *\nDisallow: /private\n"}, backend=backend)
    assert checker.disallowed_agents(url) == checker.disallowed_agents("https://example.com/private/a") != ()
    assert checker.disallowed_agents_batch([url]) == [checker.disallowed_agents(url)]
    assert checker.is_compliant("https://example.com/private/../pub/a")


# F6 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, key",
    [
        ("https://ex%61mple.com/private", "example.com"),
        ("https://[2001:0db8:0:0::1]/private", "2001:db8::1"),
        ("https://example.com\u3002/private", "example.com"),
    ],
)
def test_host_spellings_normalised_as_browsers_do(url, key):
    assert normalize_host(url) == key
    checker = RobotsCompliance({key: DISALLOW_ALL})
    assert not checker.is_compliant(url)


# IPv4 hosts in any spelling a browser reads as one address (expected values: the WHATWG URL parser, as ada-url
# gives them); hosts a browser refuses (`09`, five parts, a part over 255 before the last) stay as written.
@pytest.mark.parametrize(
    "host, key",
    [
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("0300.0250.0.1", "192.168.0.1"),
        ("4294967295", "255.255.255.255"),
        ("0xffffffff", "255.255.255.255"),
        ("1.256", "1.0.1.0"),
        ("1.2.3", "1.2.0.3"),
        ("0x", "0.0.0.0"),
        ("1.0x", "1.0.0.0"),
        ("%30x7f.1", "127.0.0.1"),
        ("\uff11\uff12\uff17.0.0.1", "127.0.0.1"),
        ("09", "09"),
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("1.2.65536", "1.2.65536"),
        ("4294967296", "4294967296"),
        ("example.1", "example.1"),
        ("1e", "1e"),
        ("00x1", "00x1"),
    ],
)
def test_ipv4_hosts_have_one_key_whatever_their_spelling(host, key):
    assert normalize_host(f"http://{host}/private") == key
    if key[0].isdigit() and key.count(".") == 3 and all(p.isdigit() for p in key.split(".")):
        checker = RobotsCompliance({"127.0.0.1": DISALLOW_ALL, key: DISALLOW_ALL})
        assert not checker.is_compliant(f"http://{host}/private")


@pytest.mark.parametrize(
    "first, second", [("127.0.0.1", "0x7f.1"), ("127.0.0.1", "2130706433"), ("a.com", "A.COM:8080")]
)
def test_a_mapping_that_names_one_host_twice_is_refused(first, second):
    """Was: `from_dict` kept the later spelling's text (a Disallow for 127.0.0.1 lost to an Allow for 0x7f.1), while
    `load` refused the same records."""
    robots = {first: DISALLOW_ALL, second: "User-agent: *\nAllow: /\n"}
    with pytest.raises(ValueError, match="same host"):
        RobotsTxtStore.from_dict(robots)
    with pytest.raises(ValueError, match="same host"):
        RobotsCompliance(robots)


# F8 -----------------------------------------------------------------------------------------------------------------
def test_docs_do_not_promise_a_faster_datatrove_engine():
    """The recipe's --engine datatrove runs one in-process step; the text said it filtered faster."""
    import dataclasses
    from pathlib import Path

    from hf_ext.recipes.compliance import ComplianceArguments

    docs = (Path(__file__).parents[2] / "docs" / "compliance.md").read_text(encoding="utf-8")
    assert "filter faster with `--num_proc` or `--engine datatrove`" not in docs
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(ComplianceArguments)}["engine"]
    assert "in this process" in help_text and "SlurmPipelineExecutor" in help_text
