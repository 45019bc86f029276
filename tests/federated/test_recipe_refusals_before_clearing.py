"""The federated recipe refuses, before it removes an earlier run's results or trains anything (audit fd14,
findings B, D, F): the DP-SGD incompatibilities of a '+dp' run, canaries too short for the longest prefix plus the
window, and a Goldfish window that would drop nothing. write_outputs handles runs without memorization records."""

import json
import os

import pytest

from hf_ext.recipes.federated import main, write_outputs

from .conftest import tiny_recipe_args


def _earlier_results(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"earlier": "run"}))
    return out


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--label_smoothing_factor", "0.1"], "--label_smoothing_factor 0.1 would be ignored by the '\\+dp' runs"),
        (["--gradient_checkpointing"], "--gradient_checkpointing .* does not work with the '\\+dp' runs"),
        (["--activation_checkpointing"], "--gradient_checkpointing .* does not work with the '\\+dp' runs"),
    ],
)
def test_dp_incompatible_flags_are_refused_before_anything_runs(tmp_path, extra, match):
    out = _earlier_results(tmp_path)
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), "--configs", "lora,lora+dp", *tiny_recipe_args(), *extra])
    # was: refused when the loop reached 'lora+dp', after pretraining, the 'lora' run and removing results.json
    assert (out / "results.json").exists() and sorted(os.listdir(out)) == ["results.json"]


def test_short_canaries_are_refused_before_anything_runs(tmp_path):
    out = _earlier_results(tmp_path)
    argv = tiny_recipe_args(block_size=64, prefix_lengths=40, window=20)
    with pytest.raises(ValueError, match="fewer than 61 tokens .* Raise --canary_words"):
        main(["--output_dir", str(out), "--configs", "lora", "--canary_words", "3", *argv])
    assert sorted(os.listdir(out)) == ["results.json"]  # was: every run trained, then an IndexError


def _follow_the_advice(tmp_path, flags, expect):
    """Run the recipe, and while it refuses the canaries' length do what its message says; the advice seen, in order.
    `expect`: the kinds of advice that must come, in order."""
    import re

    seen = []
    for step in range(len(expect) + 1):
        argv = ["--output_dir", str(tmp_path / f"out{step}"), "--configs", "full", *tiny_recipe_args(**flags)]
        try:
            main(argv)
            return seen
        except ValueError as err:
            message = str(err)
        assert step < len(expect), f"still refused after following {seen}: {message}"
        if m := re.search(r"Raise --block_size above (\d+)", message):
            seen.append("validate: --block_size")
            flags["block_size"] = int(m.group(1)) + 1
        elif m := re.search(r"raise --block_size to (\d+)", message):
            seen.append("cut: --block_size")
            assert "Raise --canary_words" not in message  # it could not help: a longer canary is cut again
            flags["block_size"] = int(m.group(1))
        elif "Raise --canary_words" in message:
            seen.append("--canary_words")
            flags["canary_words"] = 2 * flags["canary_words"]
        else:
            raise AssertionError(f"no advice to follow in: {message}")
        assert seen[-1] == expect[step], (seen, message)


@pytest.mark.parametrize(
    "flags, expect",
    [
        # the longest prefix plus the window is 32: validate names the bound, the cut to whole words then the size
        (dict(block_size=31, prefix_lengths=5, window=27), ["validate: --block_size", "cut: --block_size"]),
        # a block of exactly prefix + window (validate's old advice): no --canary_words helps, --block_size does
        (dict(block_size=32, prefix_lengths=5, window=27, canary_words=200), ["cut: --block_size"]),
        # canaries of 3 and 6 words are too short before any cut (--canary_words); of 12, the cut to 64 tokens is
        (dict(block_size=64, prefix_lengths=40, window=20, canary_words=3), ["--canary_words"] * 2 + ["cut: --block_size"]),
    ],
)
def test_following_the_canary_length_advice_makes_the_run_pass(tmp_path, flags, expect):
    """Canaries are cut to the whole words within one --block_size block: where that cut made them too short the
    refusal advised --canary_words (a longer canary is cut to the same block again: no value passed), and validate
    advised a --block_size of exactly prefix + window, which that cut always refused (audit rv15, finding 2)."""
    flags = {"canary_words": 50, **flags}
    assert _follow_the_advice(tmp_path, flags, expect) == expect


def test_goldfish_window_not_below_the_block_size_is_refused(tmp_path):
    out = _earlier_results(tmp_path)
    argv = ["--output_dir", str(out), "--configs", "lora+goldfish", *tiny_recipe_args()]  # --block_size 32
    with pytest.raises(ValueError, match="--defense_goldfish_context_width 32 is >= --block_size 32"):
        main([*argv, "--defense_goldfish_context_width", "32"])
    assert sorted(os.listdir(out)) == ["results.json"]


def test_write_outputs_without_memorization_records(tmp_path):
    """A run whose canaries were all skipped has exposure and loss but no exact/approx keys: all three files."""
    hist = [{"round": r, "eval_loss": 5.0 - r, "exposure_2x": 0.1 * r} for r in (0, 1)]
    results = {"runs": {"lora": {"setting": "federated", "num_clients": 2, "history": hist}}}
    write_outputs(results, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["memorization_table.md", "memorization_vs_rounds.png", "results.json"]
    table = (tmp_path / "memorization_table.md").read_text()
    assert "exposure_2x gain" in table and "| lora | federated | 2 |" in table
    (tmp_path / "bare").mkdir()
    write_outputs({"runs": {"lora": {"history": [{"round": 0, "eval_loss": 5.0}]}}}, str(tmp_path / "bare"))
