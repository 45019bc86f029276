"""ev38 fixes: the wrapper CLI's `--num_fewshot` and `--limit` checked before lm-eval loads the model."""

import sys

import pytest

pytest.importorskip("lm_eval")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "hf", "--tasks", "hf_ext_domain", "--num_fewshot", "37"], "hf_ext_domain has 36 few-shot items"),
        (["run", "-t", "hf_ext_cloze,hf_ext_domain", "-f", "33"], "hf_ext_cloze has 32 few-shot items"),
        (["run", "--tasks", "hf_ext", "--num_fewshot=40"], "--num_fewshot 40 needs at most"),
        (["run", "--tasks", "hf_ext_cloze", "--num_fewshot", "-1"], "--num_fewshot must be a non-negative"),
        (["run", "--tasks", "hf_ext_cloze", "--limit", "0"], "--limit must be a positive"),
        (["run", "--tasks", "hf_ext_cloze", "-L", "-0.5"], "--limit must be a positive"),
        (["run", "--tasks", "hf_ext_cloze", "--limit=nan"], "--limit must be a positive"),
    ],
)
def test_wrapper_cli_refuses_a_bad_num_fewshot_before_lm_eval_runs(argv, message, monkeypatch, capsys):
    """(ev38 F1) lm-eval's CLI ran `--num_fewshot -1` (reported as "n-shot -1") and failed on 37 shots of
    hf_ext_domain with a bare "Sample larger than population" after loading the model; the wrapper refuses both
    first, naming the flag (exit 2, as a usage error); so is a --limit that is not positive (lm-eval failed on 0 and
    -0.5 with messages not naming it)."""
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    ran = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: ran.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--tasks", "hf_ext_domain", "--num_fewshot", "36"],  # the whole pool
        ["run", "--tasks", "arc_easy", "--num_fewshot", "50"],  # not a packaged task: lm-eval's to check
        ["run", "--tasks", "hf_ext_cloze", "--num_fewshot", "x"],  # lm-eval's parser reports a non-int
        ["run", "--tasks", "hf_ext_cloze", "--limit", "0.5", "-f", "2"],  # a share
    ],
)
def test_wrapper_cli_passes_other_shot_counts_to_lm_eval(argv, monkeypatch):
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    ran = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: ran.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    main(list(argv))
    assert ran and ran[0][1 : 1 + len(argv)] == argv
