"""Pass-34 mutation run (mu39): pins for the wrapper CLI's `_run_flag_problem`."""

import pytest

from .conftest import run_wrapper

pytest.importorskip("lm_eval")


@pytest.mark.parametrize("flag", ["--num_fewshot", "-f", "--limit", "-L", "--tasks"])
def test_a_flag_without_its_value_at_the_end_is_left_to_lm_eval(flag, tmp_path, monkeypatch):
    """`--num_fewshot` last on the line (no value; with the user's own --include_path nothing is appended after it) is
    lm-eval's parser's to report, not an IndexError here."""
    assert run_wrapper(["run", "--include_path", str(tmp_path), "--tasks", "hf_ext_cloze", flag], monkeypatch)


@pytest.mark.parametrize("argv", [["run", "--tasks", "hf_ext_cloze", "--num_fewshot", "0"], ["run", "-f", "0"]])
def test_zero_shots_are_passed_on(argv, monkeypatch):
    assert run_wrapper(argv, monkeypatch)


def test_an_infinite_limit_is_refused(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        run_wrapper(["run", "--tasks", "hf_ext_cloze", "--limit", "inf"], monkeypatch)
    assert exc.value.code == 2
    assert "--limit must be a positive" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--tasks=hf_ext_domain", "--num_fewshot", "37"], "hf_ext_domain has 36"),  # the `=` form of --tasks
        (["run", "-f", "35", "--tasks", "hf_ext_domain", "hf_ext_cloze"], "hf_ext_cloze has 32"),  # space-separated
    ],
)
def test_other_task_forms_are_checked_too(argv, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        run_wrapper(argv, monkeypatch)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
