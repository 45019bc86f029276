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
    import hf_ext.recipes.warmup as recipe

    out = tmp_path / "out"
    _plant(out, ["warmup_results.json", "warmup.png", "mine.txt"])
    if resume:  # a complete checkpoint of the arm: the run continues, its results stay until it rewrites them
        ckpt = out / "adamw_no_warmup" / "checkpoint-2"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    monkeypatch.setattr(recipe, "_ArmTrainer", _interrupt)  # the recipe's WarmupFreeTrainer (records the arm)
    argv = ["--arms", "adamw_no_warmup", "--max_steps", "3", "--hidden_size", "32", "--intermediate_size", "64",
            "--vocab_size", "512", "--block_size", "32", "--use_cpu", "true", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(_Interrupted):
        recipe.main(argv + (["--resume_from_checkpoint", "last"] if resume else []))
    kept = {"warmup_results.json", "warmup.png"} if resume else set()
    assert {p.name for p in out.iterdir() if p.is_file()} == kept | {"mine.txt"}


_TINY_PRETRAIN = ["--model_type", "llama", "--fp8_backend", "none", "--hidden_size", "32", "--intermediate_size", "64",
                  "--num_hidden_layers", "1", "--num_attention_heads", "2", "--block_size", "32", "--max_steps", "2",
                  "--max_eval_blocks", "2", "--max_new_tokens", "2"]  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--vocab_size", "100"], "--vocab_size"),
        (["--text_column", "body"], "--text_column"),  # found when the data is loaded
        (["--seed", "-1"], "--seed"),
        (["--adam_epsilon", "-1"], "--adam_epsilon"),
        (["--adam_beta1", "2"], "--adam_beta1"),
        (["--warmup_steps", "nan"], "--warmup_steps"),
        (["--lr_scheduler_kwargs", '{"num_decay_steps": 5.0}'], "--lr_scheduler_kwargs"),
    ],
)
def test_pretrain_refused_for_a_bad_value_leaves_the_earlier_results(tmp_path, extra, match):
    """Each of these values was found only after the earlier run's results had been removed (by `set_seed`, the
    tokenizer, the data or the optimizer), so a rerun that never trained deleted them."""
    from hf_ext.recipes.pretrain import main

    out = tmp_path / "out"
    _plant(out, ["pretrain_results.json", "fp8_health.json"])
    with pytest.raises(ValueError, match=match):
        main([*_TINY_PRETRAIN, *extra, "--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["fp8_health.json", "pretrain_results.json"]


def test_layer_parallel_refused_for_a_missing_text_column_leaves_the_earlier_results(tmp_path):
    from hf_ext.recipes.layer_parallel import RESULT_FILES, main

    out = tmp_path / "out"
    _plant(out, [RESULT_FILES[0]])
    with pytest.raises(ValueError, match="--text_column"):
        main(["--text_column", "body", "--output_dir", str(out)])
    assert [p.name for p in out.iterdir()] == [RESULT_FILES[0]]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--vocab_size", "100"], "--vocab_size"),
        (["--block_size", "100000"], "--block_size"),  # found when the targets are packed
    ],
)
def test_grape_refused_for_a_bad_value_leaves_the_earlier_results(tmp_path, extra, match):
    from hf_ext.recipes.grape import main

    out = tmp_path / "out"
    _plant(out, ["grape_results.json", "mixture.json"])
    with pytest.raises(ValueError, match=match):
        main(["--max_steps", "2", "--hidden_size", "16", "--num_attention_heads", "2", *extra, "--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["grape_results.json", "mixture.json"]
