"""Audit cp26: a DCG over losses and HF Trainer metrics files, agent names that are not a product token, and empty
robots.txt snapshots."""

from __future__ import annotations

import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxt, RobotsTxtStore
from hf_ext.recipes.compliance import main

ROBOTS = "User-agent: GPTBot\nDisallow: /\n\nUser-agent: Mozilla\nAllow: /\n"
FULL_UA = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"


def _retention_args(tmp_path):
    docs = tmp_path / "docs.jsonl"  # two documents and a small tokenizer keep the retention part fast
    docs.write_text("".join(json.dumps({"url": f"https://example.org/{i}", "text": "a b c"}) + "\n" for i in (1, 2)))
    return ["--train_file", str(docs), "--vocab_size", "300"]


# --- F2: agent names that are not a product token -------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent, checked_as, hint",
    [
        (FULL_UA, "mozilla", "GPTBot"),
        ("GPT Bot", "gpt", "GPTBot"),
        ("GPTBot*", "gptbot", "GPTBot"),
        ("Foo Bar", "foo", "FooBar"),
        ("GPTBot/", "gptbot", "GPTBot"),
    ],
)
@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_a_name_that_is_not_a_product_token_is_refused(backend, agent, checked_as, hint):
    """A full User-Agent header was checked as `mozilla` and 'GPT Bot' as `gpt`: the GPTBot-opted-out page was kept."""
    if backend == "google":
        pytest.importorskip("robotstxt")
    pattern = rf"user_agents '.*' \(would be checked as '{checked_as}'\).* Pass '{hint}' instead"
    with pytest.raises(ValueError, match=pattern):
        RobotsCompliance({"a.com": ROBOTS}, user_agents=[agent], backend=backend)


@pytest.mark.parametrize("agent", ["GPTBot", "GPTBot/1.2", "gptbot", "AI2Bot", "CCBot/2.0", "Applebot-Extended", "*"])
@pytest.mark.parametrize("backend", ["rfc9309", "protego", "google"])
def test_product_tokens_and_versions_are_accepted(backend, agent):
    if backend == "google":
        pytest.importorskip("robotstxt")
    checker = RobotsCompliance({"a.com": ROBOTS}, user_agents=[agent], backend=backend)
    assert checker.is_compliant("https://a.com/article") is not agent.lower().startswith("gptbot")


def test_robotstxt_allowed_refuses_a_name_that_is_not_a_product_token():
    """Google's suite: `IsUserAgentAllowed(..., "Foo Bar", url)` is false there; hf_ext decided it for `foo`."""
    robots = RobotsTxt.parse("User-agent: Foo\nDisallow: /\n")
    assert not robots.allowed("https://a.com/x", "Foo")
    with pytest.raises(ValueError, match=r"agent 'Foo Bar' \(would be checked as 'foo'\)"):
        robots.allowed("https://a.com/x", "Foo Bar")
    with pytest.raises(ValueError, match="agent 'Foo Bar'"):  # the check is not skipped by a cached lookup
        robots.matcher("Foo Bar")


def test_datatrove_filter_refuses_a_full_user_agent_header(tmp_path):
    pytest.importorskip("datatrove")
    from hf_ext.compliance import RobotsTxtFilter

    store = RobotsTxtStore.from_dict({"a.com": ROBOTS})
    path = store.save(tmp_path / "snap.jsonl")
    for robots in (store, str(path), RobotsCompliance(store, user_agents=["GPTBot"])):
        with pytest.raises(ValueError, match=r"user_agents 'Mozilla/5\.0.*would be checked as 'mozilla'.*'GPTBot'"):
            RobotsTxtFilter(robots, user_agents=[FULL_UA])


@pytest.mark.parametrize(
    "agents, shown", [("GPT Bot", "GPT Bot"), ("GPTBot,Mozilla/5.0 (compatible; CCBot/2.0)", "Mozilla")]
)
def test_recipe_refuses_user_agents_that_are_not_product_tokens(tmp_path, agents, shown):
    """`--user_agents "GPT Bot"` ran and removed nothing, with no warning."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=rf"--user_agents '{shown}.*would be checked as"):
        main(["--user_agents", agents, "--output_dir", str(out)])
    assert not out.exists()


# --- F3: empty snapshots --------------------------------------------------------------------------------------------
def _empty_snapshot(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n")
    else:
        RobotsTxtStore().save(path)  # a 0-row Parquet file with the columns, or a folder with a manifest only
    return path


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet", "empty_folder"])
def test_an_empty_snapshot_is_refused_in_every_format(tmp_path, name):
    """An empty .jsonl or .parquet loaded as 0 hosts (the recipe then removed nothing, rc 0), while an empty folder
    was refused."""
    path = _empty_snapshot(tmp_path, name)
    with pytest.raises(ValueError, match=r"holds no robots\.txt records \(0 hosts\).*allow_empty=True"):
        RobotsTxtStore.load(path)
    assert len(RobotsTxtStore.load(path, allow_empty=True)) == 0
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--robots: robots\.txt snapshot .* holds no robots\.txt records"):
        main(["--robots", str(path), *_retention_args(tmp_path), "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet", "empty_folder"])
def test_datatrove_filter_refuses_an_empty_snapshot_at_construction(tmp_path, name):
    pytest.importorskip("datatrove")
    from hf_ext.compliance import RobotsTxtFilter

    path = _empty_snapshot(tmp_path, name)
    with pytest.raises(ValueError, match=r"holds no robots\.txt records \(0 hosts\)"):
        RobotsTxtFilter(str(path))
    RobotsTxtStore.from_dict({"a.com": ROBOTS}).save(path)
    assert len(RobotsTxtFilter(str(path)).checker.store) == 1
