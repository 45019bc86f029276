"""GRAPE: a checkpoint records its `reweight_method` (in `grape_state.json`), and a resume refuses a checkpoint of
another method before any work; a rerun clears the earlier run's plot and mixture under their default names too.

Before, `--resume_from_checkpoint <a doge run's checkpoint>` ran with the default --reweight_method grape and reported
`method: grape` for a doge/grape hybrid; a rerun with `--plot_file ""` kept the earlier `mixture_weights.png`, one
with `--export_mixture_file mix_new.json` kept the earlier `mixture.json` (the file fed to `--reweight_method fixed`),
and a `fixed` run into the folder of the run whose `mixture.json` it reads deleted that file before reading it."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from grape_synthetic import without_reweighting

TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
        "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
        "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1", "--reweight_tasks_every", "1",
        "--source_domains", "text,numeric,networking,filesystem", "--disable_tqdm", "true", "--use_cpu", "true",
        "--logging_steps", "1", "--seed", "3"]  # fmt: skip
CKPT = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]

# doge has no task updates: the recipe refuses --reweight_tasks_every for it
DOGE = without_reweighting(
    TINY, keep=("--reweight_domains_every", "--reweight_batch_size", "--reweight_mini_batch_size")
)


@pytest.fixture(scope="module")
def doge_run(tmp_path_factory):
    """A 4-step doge run with checkpoints at steps 2 and 4: (its checkpoint-2, its results)."""
    from hf_ext.recipes.grape import main

    out = tmp_path_factory.mktemp("doge")
    results = main([*DOGE, *CKPT, "--reweight_method", "doge", "--output_dir", str(out)])
    return out / "checkpoint-2", results


def test_checkpoint_records_the_method(doge_run):
    checkpoint, _ = doge_run
    assert json.loads((checkpoint / "grape_state.json").read_text())["reweight_method"] == "doge"


def test_a_checkpoint_of_another_method_is_refused_before_any_work(tmp_path, doge_run):
    from hf_ext.recipes.grape import main

    checkpoint, _ = doge_run
    out = tmp_path / "mixed"
    with pytest.raises(
        ValueError,
        match=r"--resume_from_checkpoint='.*checkpoint-2' is a checkpoint of a 'doge' run, but --reweight_method is "
        r"'grape'; pass --reweight_method doge to continue it",
    ):
        main([*TINY, *CKPT, "--output_dir", str(out), "--resume_from_checkpoint", str(checkpoint)])
    assert not out.exists()


def test_a_bare_resume_checks_the_method_of_the_newest_checkpoint(tmp_path, doge_run):
    from hf_ext.recipes.grape import main

    checkpoint, _ = doge_run
    out = tmp_path / "out"
    shutil.copytree(checkpoint, out / "checkpoint-2")
    with pytest.raises(ValueError, match="is a checkpoint of a 'doge' run, but --reweight_method is 'grape_ema'"):
        main([*TINY, *CKPT, "--reweight_method", "grape_ema", "--output_dir", str(out), "--resume_from_checkpoint"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]


def test_a_checkpoint_without_a_mixture_state_is_refused_by_name(tmp_path, doge_run):
    """A Trainer checkpoint of another recipe used to fail after the tokenizer, the data and the clearing."""
    from hf_ext.recipes.grape import main

    checkpoint, _ = doge_run
    other = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, other)
    for name in ("grape_state.json", "grape_state.safetensors"):
        (other / name).unlink()
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint=.* holds no mixture state .*not written by this"):
        main([*TINY, *CKPT, "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(other)])
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_the_record_is_resumed_with_a_warning(tmp_path, doge_run, caplog):
    """A state written before the method was recorded cannot be checked: it resumes (as before), with a warning, and
    a doge resume of a doge checkpoint ends where the uninterrupted run ended."""
    from hf_ext.recipes.grape import main

    checkpoint, full = doge_run
    old = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, old)
    state = json.loads((old / "grape_state.json").read_text())
    state.pop("reweight_method", None)
    (old / "grape_state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.grape"):
        res = main([*DOGE, *CKPT, "--reweight_method", "doge", "--output_dir", str(tmp_path / "out"),
                    "--resume_from_checkpoint", str(old)])  # fmt: skip
    assert "records no mixture method" in caplog.text and "resumed as --reweight_method doge unchecked" in caplog.text
    assert res["method"] == "doge"
    assert res["domain_weights"] == full["domain_weights"] and res["task_weights"] == full["task_weights"]


def test_grape_trainer_refuses_a_checkpoint_of_another_method(tmp_path, doge_run, grape_helpers):
    """The library refuses it too, before anything is restored (`GrapeTrainer.train(resume_from_checkpoint=...)`)."""
    from hf_ext.grape import GrapeConfig, GrapeTrainer

    checkpoint, _ = doge_run
    train, targets = grape_helpers["synthetic_mixture"]()
    args = GrapeConfig(output_dir=str(tmp_path / "lib"), max_steps=4, per_device_train_batch_size=4,
                       reweight_batch_size=4, reweight_mini_batch_size=2, report_to="none", use_cpu=True,
                       disable_tqdm=True, reweight_method="grape")  # fmt: skip
    model = grape_helpers["tiny_llama"]()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = GrapeTrainer(model=model, args=args, train_dataset=train, target_datasets=targets)
    with pytest.raises(ValueError, match="is a checkpoint of a 'doge' run, but reweight_method is 'grape'"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert all(p.equal(before[n]) for n, p in model.named_parameters())  # nothing restored


def test_a_rerun_clears_the_default_plot_and_mixture_and_keeps_its_mixture_file(tmp_path):
    from hf_ext.recipes.grape import main

    out = tmp_path / "out"
    run = [*TINY, "--max_steps", "2", "--output_dir", str(out)]
    main(run)
    assert (out / "mixture_weights.png").is_file() and (out / "mixture.json").is_file()
    main([*run, "--plot_file", ""])  # documented "empty to skip": the earlier plot used to stay
    assert not (out / "mixture_weights.png").exists() and (out / "mixture.json").is_file()
    # a fixed run into the folder of the run whose mixture it reads: the input is not cleared before it is read
    fixed = ["--reweight_method", "fixed", "--mixture_file", str(out / "mixture.json"), "--plot_file", ""]
    res = main([*without_reweighting(run), *fixed])
    assert res["method"] == "fixed" and (out / "mixture.json").is_file()
    main([*run, "--export_mixture_file", "mix_new.json"])  # the earlier mixture.json used to stay
    assert sorted(p.name for p in out.glob("mix*")) == ["mix_new.json", "mixture_weights.png"]
