"""lp42 fixes: the wrapper CLI reads a run's flags as lm-eval's own parser does (abbreviated and joined spellings)."""

import pytest

from .conftest import run_wrapper

pytest.importorskip("lm_eval")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--tasks", "hf_ext_domain", "-f40"], "hf_ext_domain has 36 few-shot items"),  # joined short option
        (["run", "--tasks", "hf_ext_domain", "--num_few", "40"], "--num_fewshot 40 needs at most 36"),  # abbreviation
        (["--model", "hf", "--task", "hf_ext_cloze", "--num_fewshot", "33"], "hf_ext_cloze has 32"),  # --task(s)
        (["run", "--tasks", "hf_ext_cloze", "-L0"], "--limit must be a positive"),
        (["run", "--tasks", "hf_ext_cloze", "--lim", "0"], "--limit must be a positive"),
        (["run", "--tasks", "hf_ext_cloze", "-f-2"], "--num_fewshot must be a non-negative"),
    ],
)
def test_abbreviated_and_joined_flags_are_checked(argv, message, monkeypatch, capsys):
    """(lp42 F1) lm-eval's parser (argparse) takes `-f40`, `-L0` and unambiguous prefixes such as `--num_few 40` or
    `--lim 0`; the wrapper scanned only the full names, so these ran into lm-eval and failed after the model load with
    "Sample larger than population or is negative" / "did not find any docs", not naming the flag."""
    with pytest.raises(SystemExit) as exc:
        run_wrapper(argv, monkeypatch)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_an_abbreviated_include_path_is_the_users(tmp_path, monkeypatch):
    """(lp42 F1) `--include <dir>` is lm-eval's `--include_path`: the wrapper appended its own `--include_path`, which
    argparse reads last, so the user's folder was silently replaced by the packaged one."""
    ran = run_wrapper(["run", "--tasks", "my_task", "--include", str(tmp_path)], monkeypatch)
    assert ran and ran[0].count("--include_path") == 0
    assert ran[0][-1] == str(tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--tasks", "hf_ext_domain", "-f36"],  # the whole pool
        ["run", "--tasks", "hf_ext_cloze", "-L0.5", "--num_few", "2"],  # a share
        ["run", "--tasks", "hf_ext_cloze", "-fx"],  # not an int: lm-eval's parser reports it
        ["run", "--tasks", "hf_ext_cloze", "-h"],  # help: lm-eval prints it
    ],
)
def test_good_or_unparsable_spellings_go_to_lm_eval(argv, monkeypatch, capsys):
    """Guards of the new parse (these also ran before): a valid value in the new spellings, a value lm-eval's parser
    refuses and a help request reach lm-eval unchanged, with nothing printed by the wrapper."""
    ran = run_wrapper(argv, monkeypatch)
    assert ran and ran[0][1 : 1 + len(argv)] == argv
    assert capsys.readouterr().out == ""  # nothing printed by the wrapper's own parse (no help screen twice)
