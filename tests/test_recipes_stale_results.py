"""A fresh run removes the report files an earlier run of the same recipe left in --output_dir before it does any
work, so that a rerun that is interrupted (or writes fewer files) never leaves an older run's results looking current.
A resumed run keeps them (it continues that run); checkpoints, models and the user's own files are never touched."""

from __future__ import annotations

import pytest


def test_only_the_named_report_files_are_removed_and_nothing_on_resume(tmp_path):
    from hf_ext.recipes._common import clear_previous_results

    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "plot.png").mkdir()  # a folder under a report file's name is not the recipe's file: left alone
    names = ("results.json", "sub/results.json", "missing.md", "plot.png")
    assert clear_previous_results(str(tmp_path), names, resuming=True) == []
    assert (tmp_path / "results.json").exists()
    assert clear_previous_results(str(tmp_path), names) == ["results.json", "sub/results.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "notes.txt", "plot.png", "sub"]
    assert clear_previous_results(str(tmp_path / "never_made"), names) == []


class _Interrupted(KeyboardInterrupt):
    pass


def _interrupt(*args, **kwargs):
    raise _Interrupted


def _plant(out, names):
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_text("from an earlier run")


def test_cubic_newton(tmp_path, monkeypatch):
    import hf_ext.recipes.cubic_newton as recipe

    out = tmp_path / "out"
    _plant(out, ["cubic_newton_results.json", "cubic_newton.png", "mine.txt"])
    monkeypatch.setattr(recipe, "run_logistic", _interrupt)
    with pytest.raises(_Interrupted):
        recipe.main(["--problems", "logistic", "--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_neuralgrok(tmp_path, monkeypatch):
    import hf_ext.neuralgrok.trainer as trainer
    import hf_ext.recipes.neuralgrok as recipe

    out = tmp_path / "out"
    _plant(out, ["neuralgrok_results.json", "neuralgrok_results.md", "grokking_curves.png", "mine.txt"])
    monkeypatch.setattr(trainer, "NeuralGrokTrainer", _interrupt)
    with pytest.raises(_Interrupted):
        recipe.main(["--p", "11", "--hidden_size", "32", "--max_steps", "2", "--seeds", "0", "--methods", "none",
                     "--report_to", "none", "--output_dir", str(out)])  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("resume", [False, True])
def test_warmup(tmp_path, monkeypatch, resume):
    import hf_ext.optim.warmup_trainer as trainer
    import hf_ext.recipes.warmup as recipe

    out = tmp_path / "out"
    _plant(out, ["warmup_results.json", "warmup.png", "mine.txt"])
    if resume:  # a complete checkpoint of the arm: the run continues, its results stay until it rewrites them
        ckpt = out / "adamw_no_warmup" / "checkpoint-2"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    monkeypatch.setattr(trainer, "WarmupFreeTrainer", _interrupt)
    argv = ["--arms", "adamw_no_warmup", "--max_steps", "3", "--hidden_size", "32", "--intermediate_size", "64",
            "--vocab_size", "512", "--block_size", "32", "--use_cpu", "true", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(_Interrupted):
        recipe.main(argv + (["--resume_from_checkpoint", "last"] if resume else []))
    kept = {"warmup_results.json", "warmup.png"} if resume else set()
    assert {p.name for p in out.iterdir() if p.is_file()} == kept | {"mine.txt"}
