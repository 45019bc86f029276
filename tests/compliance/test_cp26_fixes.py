"""Audit cp26: a DCG over losses and HF Trainer metrics files, agent names that are not a product token, and empty
robots.txt snapshots."""

from __future__ import annotations

import json

import pytest

from hf_ext.compliance import RobotsCompliance, RobotsTxt, RobotsTxtStore, compute_dcg
from hf_ext.recipes.compliance import main

ROBOTS = "User-agent: GPTBot\nDisallow: /\n\nUser-agent: Mozilla\nAllow: /\n"
FULL_UA = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)"


def _retention_args(tmp_path):
    docs = tmp_path / "docs.jsonl"  # two documents and a small tokenizer keep the retention part fast
    docs.write_text("".join(json.dumps({"url": f"https://example.org/{i}", "text": "a b c"}) + "\n" for i in (1, 2)))
    return ["--train_file", str(docs), "--vocab_size", "300"]


# --- F1: the DCG of losses ------------------------------------------------------------------------------------------
FULL_LOSS = {"a": 2.0, "b": 3.0, "c": 4.0}
COMP_LOSS = {"a": 2.5, "b": 2.9, "c": 4.4}
# (p_full - p_compliant) / |p_full| * 100 with the sign flipped (lower is better): a higher compliant loss costs
LOSS_GAPS = {"a": 25.0, "b": -100 / 30, "c": 10.0}

TRAINER_FULL = {"epoch": 3.0, "eval_accuracy": 0.41, "eval_loss": 2.0, "eval_runtime": 10.5, "eval_samples": 500,
                "eval_samples_per_second": 47.6, "eval_steps_per_second": 6.0, "perplexity": 7.389}  # fmt: skip
TRAINER_COMP = {"epoch": 3.0, "eval_accuracy": 0.39, "eval_loss": 2.5, "eval_runtime": 9.1, "eval_samples": 500,
                "eval_samples_per_second": 54.9, "eval_steps_per_second": 6.9, "perplexity": 12.18}  # fmt: skip


@pytest.mark.parametrize(
    "full, comp, metric",
    [
        ({t: {"eval_loss": v} for t, v in FULL_LOSS.items()}, {t: {"eval_loss": v} for t, v in COMP_LOSS.items()}, "eval_loss"),
        ({t: {"loss": v} for t, v in FULL_LOSS.items()}, {t: {"loss": v} for t, v in COMP_LOSS.items()}, "loss"),
        ({t: {"eval_loss": v} for t, v in FULL_LOSS.items()}, {t: {"eval_loss": v} for t, v in COMP_LOSS.items()}, None),
        ({t: {"eval_ppl": v} for t, v in FULL_LOSS.items()}, {t: {"eval_ppl": v} for t, v in COMP_LOSS.items()}, None),
        ({"results": {t: {"train_loss,none": v} for t, v in FULL_LOSS.items()}},
         {"results": {t: {"train_loss,none": v} for t, v in COMP_LOSS.items()}}, None),
        (FULL_LOSS, COMP_LOSS, "eval_loss"),  # bare scores: the metric named gives the direction
    ],
)  # fmt: skip
def test_a_loss_gap_is_positive_when_the_compliant_model_is_worse(full, comp, metric):
    """`metric="eval_loss"`/`"loss"` and an `eval_loss` key were compared higher-is-better: mean -10.56 where the
    brute force (lower is better) gives +10.56."""
    report = compute_dcg(full, comp, metric=metric)
    assert {r["task"]: r["gap"] for r in report.rows} == pytest.approx(LOSS_GAPS)
    assert report.mean_gap == pytest.approx(sum(LOSS_GAPS.values()) / 3)


def test_the_lower_is_better_rule():
    from hf_ext.compliance.dcg import is_lower_is_better

    lower = ["loss", "eval_loss", "train_loss", "Eval_Loss", "perplexity", "word_perplexity", "byte_perplexity",
             "eval_perplexity", "word_perplexity,none", "ppl", "eval_ppl", "bits_per_byte", "eval_bits_per_byte",
             "loss,none"]  # fmt: skip
    higher = ["acc", "acc_norm,none", "eval_accuracy", "f1", "exact_match,strict-match", "gloss", "lossless", "bleu",
              "pplx_score", None]  # fmt: skip
    assert [m for m in lower if not is_lower_is_better(m)] == []
    assert [m for m in higher if is_lower_is_better(m)] == []


def test_lower_is_better_true_and_false_cover_every_task():
    gaps = {r["task"]: r["gap"] for r in compute_dcg(FULL_LOSS, COMP_LOSS, lower_is_better=True).rows}
    assert gaps == pytest.approx(LOSS_GAPS)
    gaps = {r["task"]: r["gap"] for r in compute_dcg(FULL_LOSS, COMP_LOSS, lower_is_better=False).rows}
    assert gaps == pytest.approx({t: -g for t, g in LOSS_GAPS.items()})


def test_a_flat_trainer_metrics_dict_is_refused_and_its_metrics_compare_under_one_task():
    """`epoch`, `eval_runtime`, ... were averaged in as tasks, and `eval_loss` 2.0 -> 2.5 read as -25%."""
    with pytest.raises(ValueError, match=r"non_compliant is a HF Trainer metrics dict .*'epoch', 'eval_runtime'.*"
                       r"metric='eval_loss'"):  # fmt: skip
        compute_dcg(TRAINER_FULL, TRAINER_COMP)
    with pytest.raises(ValueError, match=r"^compliant is a HF Trainer metrics dict"):
        compute_dcg({"x": 1.0}, {"epoch": 3.0, "x": 1.0})
    full, comp = {"eval": TRAINER_FULL}, {"eval": TRAINER_COMP}
    assert compute_dcg(full, comp, metric="eval_loss").mean_gap == pytest.approx(25.0)
    assert compute_dcg(full, comp, metric="perplexity").mean_gap == pytest.approx((12.18 - 7.389) / 7.389 * 100)
    assert compute_dcg(full, comp, metric="eval_accuracy").mean_gap == pytest.approx((0.41 - 0.39) / 0.41 * 100)


def _dcg_cli(tmp_path, full, comp, *extra):
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "comp.json").write_text(json.dumps(comp))
    argv = ["--dcg_non_compliant", str(tmp_path / "full.json"), "--dcg_compliant", str(tmp_path / "comp.json")]
    return main([*argv, *_retention_args(tmp_path), *extra, "--output_dir", str(tmp_path / "o")])


def test_cli_refuses_trainer_metrics_files_naming_the_file_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"--dcg_non_compliant=.*full\.json' is a HF Trainer metrics file .*"
                       r"--dcg_metric eval_loss"):  # fmt: skip
        _dcg_cli(tmp_path, TRAINER_FULL, TRAINER_COMP)
    assert not (tmp_path / "o").exists()
    res = _dcg_cli(tmp_path, {"eval": TRAINER_FULL}, {"eval": TRAINER_COMP}, "--dcg_metric", "eval_loss")
    assert [(r["task"], r["gap"]) for r in res["dcg"]["rows"]] == [("eval", pytest.approx(25.0))]


def test_cli_reads_a_loss_key_as_lower_is_better(tmp_path):
    full = {t: {"eval_loss": v} for t, v in FULL_LOSS.items()}
    comp = {t: {"eval_loss": v} for t, v in COMP_LOSS.items()}
    for extra in ((), ("--dcg_metric", "eval_loss"), ("--dcg_lower_is_better", "true")):
        res = _dcg_cli(tmp_path, full, comp, *extra)
        assert {r["task"]: r["gap"] for r in res["dcg"]["rows"]} == pytest.approx(LOSS_GAPS), extra
    # false is used as given (e.g. a score outside the name rule)
    res = _dcg_cli(tmp_path, full, comp, "--dcg_lower_is_better", "false")
    assert {r["task"]: r["gap"] for r in res["dcg"]["rows"]} == pytest.approx({t: -g for t, g in LOSS_GAPS.items()})


def test_cli_refuses_bare_scores_whose_direction_is_unknown(tmp_path):
    """A `{task: score}` file names no metric: it was compared higher-is-better, so the recipe's own held-out losses
    got the opposite sign of its dcg_trained.json."""
    with pytest.raises(ValueError, match=r"tasks a, b, c are bare scores .*--dcg_lower_is_better true"):
        _dcg_cli(tmp_path, FULL_LOSS, COMP_LOSS)
    assert not (tmp_path / "o").exists()
    res = _dcg_cli(tmp_path, FULL_LOSS, COMP_LOSS, "--dcg_lower_is_better", "true")
    assert {r["task"]: r["gap"] for r in res["dcg"]["rows"]} == pytest.approx(LOSS_GAPS)
    acc_full, acc_comp = {"arc": 0.5}, {"arc": 0.4}
    res = _dcg_cli(tmp_path, acc_full, acc_comp, "--dcg_lower_is_better", "false")
    assert res["dcg"]["mean_gap"] == pytest.approx(20.0)


def test_dcg_lower_is_better_flag_is_checked_first(tmp_path):
    with pytest.raises(ValueError, match="--dcg_lower_is_better must be one of auto, true, false"):
        _dcg_cli(tmp_path, FULL_LOSS, COMP_LOSS, "--dcg_lower_is_better", "yes")
    with pytest.raises(ValueError, match="--dcg_lower_is_better apply to the DCG report of --dcg_non_compliant"):
        main(["--dcg_lower_is_better", "true", "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


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
