"""The wrapper CLI's `ls` / `validate`: an abbreviated `--include <dir>` is the user's own `--include_path`."""

import sys

import pytest

from hf_ext.evaluation import task_dir


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "--tasks", "my_task", "--include", "{}"],
        ["validate", "--tasks", "my_task", "--incl={}"],
        ["ls", "tasks", "--include", "{}"],
    ],
)
def test_an_abbreviated_include_path_of_ls_and_validate_is_the_users(argv, tmp_path, monkeypatch):
    """lm-eval's `ls` / `validate` parsers read `--include <dir>` as `--include_path`: the wrapper appended the packaged
    folder after it, which argparse ranks last-wins, so `validate --tasks my_task --include my_dir` reported "Tasks not
    found: my_task" (docs/evaluation.md: your own folder "is used as given")."""
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    argv = [a.format(tmp_path) for a in argv]
    main(list(argv))
    assert seen[0][1:] == argv
    assert task_dir() not in seen[0]


def test_ls_and_validate_without_a_folder_still_get_the_packaged_tasks(monkeypatch):
    import lm_eval.__main__

    from hf_ext.evaluation.__main__ import main

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["x"])
    for argv in (["validate", "--tasks", "hf_ext_domain"], ["ls", "tasks"]):
        main(list(argv))
        assert seen[-1][1:] == [*argv, "--include_path", task_dir()]
