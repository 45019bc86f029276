"""gr21 F2: `mixture_key="average"` (`--mixture_key average`) with a plain `{domain: weight}` mixture file used to be
ignored silently (the file's only weights were used, as with "final"); it is now a ValueError naming the fix."""

import json

import pytest

from hf_ext.grape import GrapeTrainer, load_mixture


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"a": 0.7, "b": 0.2, "c": 0.1}))
    return str(path)


def test_load_mixture_refuses_average_of_a_plain_map(plain):
    assert load_mixture(plain, "final") == pytest.approx({"a": 0.7, "b": 0.2, "c": 0.1})
    with pytest.raises(ValueError, match=r"plain \{domain: weight\} map.*no time average.*pass 'final'"):
        load_mixture(plain, "average")


def test_a_fixed_run_refuses_mixture_key_average_of_a_plain_map(plain, synthetic, grape_helpers, tmp_path):
    from grape_synthetic import quick_grape_args

    train, _ = synthetic
    args = quick_grape_args(str(tmp_path), reweight_method="fixed", mixture_file=plain, mixture_key="average")
    with pytest.raises(ValueError, match=r"no time average"):
        GrapeTrainer(model=grape_helpers["tiny_llama"](), args=args, train_dataset=train)


# The recipe records the flags that define a run's sources, targets, blocks and model (grape_run.json in --output_dir)
# and refuses a resume with other values by flag name before any work; another --block_size or --num_attention_heads
# of the same width used to load the checkpoint and train on silently.
RECIPE = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
          "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
          "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1", "--reweight_tasks_every", "1",
          "--source_domains", "text,numeric,networking,filesystem", "--disable_tqdm", "true", "--use_cpu", "true",
          "--logging_steps", "1", "--seed", "3", "--max_steps", "2", "--save_strategy", "steps",
          "--save_steps", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 2-step GRAPE run whose last checkpoint is gone (as if killed after step 1)."""
    import shutil

    from hf_ext.recipes.grape import main

    out = tmp_path_factory.mktemp("grape_record") / "run"
    main([*RECIPE, "--output_dir", str(out)])
    shutil.rmtree(out / "checkpoint-2")
    return out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--block_size", "16"], r"--block_size 16 \(the interrupted run used 32\).*Resume with --block_size 32"),
        (["--num_attention_heads", "4"], r"--num_attention_heads 4 \(the interrupted run used 2\)"),
        (["--eval_fraction", "0.3"], r"--eval_fraction 0.3 \(the interrupted run used 0.5\)"),
        # --seed splits each target into reweighting and evaluation blocks, whatever --data_seed is (rv21b F2)
        (["--seed", "4", "--data_seed", "3"], r"--seed 4 \(the interrupted run used 3\)"),
    ],
)
def test_a_resume_with_other_data_or_model_is_refused_before_writing(interrupted, argv, match):
    import os

    from hf_ext.recipes.grape import main

    before = {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(interrupted) for f in fs
    }
    with pytest.raises(ValueError, match=match):
        main([*RECIPE, *argv, "--output_dir", str(interrupted), "--resume_from_checkpoint", "true"])
    after = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(interrupted) for f in fs}
    assert after == before


def test_the_same_flags_resume(interrupted):
    from hf_ext.recipes.grape import main

    main([*RECIPE, "--output_dir", str(interrupted), "--resume_from_checkpoint", "true"])
    assert (interrupted / "checkpoint-2").is_dir()
