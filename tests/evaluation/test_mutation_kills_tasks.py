"""`check_eval_tasks` with an `include_path`: the user's own task folder is part of the fast (packaged-only) index,
so own tasks are found there, whatever their name, without indexing lm-eval's whole task library."""

from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from hf_ext.evaluation import check_eval_tasks, task_dir, task_manager  # noqa: E402


def _task_folder(root: Path, name: str) -> str:
    """A relative folder `mytasks/` (under `root`) holding one task `name`: the packaged cloze under another name."""
    folder = root / "mytasks"
    folder.mkdir()
    (folder / f"{name}.yaml").write_text(f"include: {Path(task_dir()) / 'hf_ext_cloze.yaml'}\ntask: {name}\n")
    return "mytasks"


def test_own_task_with_an_hf_ext_prefix_is_found_in_the_include_path(tmp_path, monkeypatch):
    """An own task named `hf_ext_*` in `include_path` is accepted: the packaged-only index already holds the
    include folder (an `hf_ext*` name missing from that index is refused without a second, full index)."""
    monkeypatch.chdir(tmp_path)
    folder = _task_folder(tmp_path, "hf_ext_mine")
    assert "hf_ext_mine" in task_manager(folder, include_defaults=False).task_index  # the folder is well-formed
    assert check_eval_tasks("hf_ext_mine,hf_ext_cloze", include_path=folder) == ["hf_ext_mine", "hf_ext_cloze"]


def test_own_task_in_the_include_path_needs_no_index_of_lm_eval_library(tmp_path, monkeypatch):
    """`my_cloze` from `include_path` is found by the first, packaged-only index, built with that include path;
    lm-eval's own library (several seconds to index) is never indexed."""
    import hf_ext.evaluation.prompting as prompting

    monkeypatch.chdir(tmp_path)
    folder = _task_folder(tmp_path, "my_cloze")
    calls = []

    def recording_task_manager(include_path=None, include_defaults=True, metadata=None):
        calls.append((include_path, include_defaults))
        if include_defaults:
            raise AssertionError("lm-eval's whole task library was indexed for a task of the include path")
        return task_manager(include_path, include_defaults=False, metadata=metadata)

    monkeypatch.setattr(prompting, "task_manager", recording_task_manager)
    assert check_eval_tasks("my_cloze,hf_ext_domain", include_path=folder) == ["my_cloze", "hf_ext_domain"]
    assert calls == [(folder, False)]
