"""The neuralgrok recipe: a tiny end-to-end run writes results, tables and curves; resume continues interrupted runs;
bad arguments fail before any write."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hf_ext.recipes.neuralgrok import main, merge_results

TINY = [
    "--p", "11", "--hidden_size", "32", "--per_device_train_batch_size", "16", "--outer_fraction", "0.2",
    "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


def test_recipe_tiny_run_writes_results_tables_and_pngs(tmp_path):
    out = tmp_path / "out"
    methods = ["none", "none_strong_wd", "normalize", "grokfast_ema", "neuralgrok"]
    results = main(
        TINY + ["--max_steps", "6", "--eval_steps", "3", "--logging_steps", "3", "--seeds", "0",
                "--methods", ",".join(methods), "--output_dir", str(out), "--target_accuracy", "0.01"]
    )  # fmt: skip
    for name in ("grokking_curves.png", "complexity_stability.png"):
        assert (out / name).stat().st_size > 10_000, name
    saved = json.loads((out / "neuralgrok_results.json").read_text())
    assert list(saved["methods"]) == methods
    table = (out / "neuralgrok_results.md").read_text()
    assert "normalisation only (control)" in table and "strong weight decay" in table and "wall-clock" in table
    for method, res in results["methods"].items():
        run = res["runs"][0]
        assert run["steps_run"] == 6 and run["steps_to_target"] == 3, method
        assert len(run["curves"]["test"]) == 2 and len(run["curves"]["weight_norm"]) == 2
        # mean step time over all 6 steps (outer steps included), training time up to the target step
        assert 0 < run["seconds_to_target"] < run["wall_seconds_to_target"]
        assert run["seconds_per_step"] > 0 and res["cost_per_step_vs_none"] > 0
        assert 0 < run["cpu_seconds_to_target"] and res["cpu_cost_per_step_vs_none"] > 0
        assert res["steps_to_target_mean"] == 3 and res["reached"] == 1
        assert run["stability"]["reached"] and run["complexity"]["mean_age_raw"] > 0
    assert results["methods"]["none"]["time_to_target_vs_none"] == pytest.approx(1.0)
    assert saved["amplifier"]["macs_per_entry"] == 1 * 32 + 32 * 32 + 32 * 1
    assert saved["strong_weight_decay"] == 1e-2
    # results of one process per seed merge into one summary over the seeds
    other = json.loads(json.dumps(saved))
    other["seeds"] = [7]
    for res in other["methods"].values():
        for run in res["runs"]:
            run["seed"] = 7
    merged = merge_results([saved, other])
    assert merged["seeds"] == [0, 7] and merged["methods"]["neuralgrok"]["seeds"] == 2
    assert (
        merged["methods"]["none"]["steps_to_target_mean"] == 3
        and merged["methods"]["none"]["steps_to_target_std"] == 0
    )
    with pytest.raises(ValueError, match="repeat seeds"):
        merge_results([saved, saved])


def test_recipe_resume_continues_an_interrupted_run_exactly(tmp_path):
    """Run 6 steps with checkpoints every 3; delete checkpoint-6 (as if killed after step 3) and resume with a bare
    --resume_from_checkpoint: each run restarts at step 3 from its checkpoint (amplifier, meta-optimizer, Grokfast
    filter) and ends exactly where the uninterrupted run ended."""
    argv = TINY + ["--max_steps", "6", "--eval_steps", "3", "--logging_steps", "1", "--seeds", "0",
                   "--methods", "neuralgrok,grokfast_ema", "--save_strategy", "steps", "--save_steps", "3"]  # fmt: skip
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = main(argv + ["--output_dir", str(full_dir)])
    shutil.copytree(full_dir, cut_dir)
    for method in ("neuralgrok", "grokfast_ema"):
        shutil.rmtree(cut_dir / f"{method}-seed0" / "checkpoint-6")
    resumed = main(argv + ["--output_dir", str(cut_dir), "--resume_from_checkpoint"])
    for method, files in {
        "neuralgrok": [
            "model.safetensors",
            "neuralgrok_amplifier.safetensors",
            "neuralgrok_meta_optimizer.safetensors",
        ],
        "grokfast_ema": ["model.safetensors", "gradient_transform_state.safetensors"],
    }.items():
        run = resumed["methods"][method]["runs"][0]
        assert run["resumed_from"] == "checkpoint-3" and run["steps_run_in_this_process"] == 3, method
        for name in files:
            a = load_file(str(full_dir / f"{method}-seed0" / "checkpoint-6" / name))
            b = load_file(str(cut_dir / f"{method}-seed0" / "checkpoint-6" / name))
            assert a.keys() == b.keys(), name
            for key in a:
                torch.testing.assert_close(a[key], b[key], msg=f"{method} {name} {key}")
        assert run["curves"]["loss"] == full["methods"][method]["runs"][0]["curves"]["loss"]
        assert len(run["curves"]["loss"]) == 6


@pytest.mark.filterwarnings("error:No artists with labels:UserWarning")  # the AGE panel of a short run
def test_recipe_resume_and_overwrite_errors(tmp_path):
    out = tmp_path / "out"
    i = TINY.index("--outer_fraction")
    tiny = TINY[:i] + TINY[i + 2 :]  # --methods none reads no --outer_fraction (it is refused)
    base = tiny + ["--max_steps", "2", "--seeds", "0", "--methods", "none", "--output_dir", str(out)]
    with pytest.raises(ValueError, match="no complete checkpoint"):
        main(base + ["--resume_from_checkpoint"])
    assert not out.exists()
    main(base + ["--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no"])
    with pytest.raises(ValueError, match="--resume_from_checkpoint to continue"):
        main(base)  # a fresh run would overwrite checkpoint-2
    with pytest.raises(ValueError, match="names one checkpoint folder"):
        main(TINY + ["--max_steps", "2", "--seeds", "0", "--methods", "none,normalize", "--output_dir", str(out),
                     "--resume_from_checkpoint", str(out / "none-seed0" / "checkpoint-2")])  # fmt: skip
    with pytest.raises(ValueError, match="cannot be used"):
        main(base + ["--resume_from_checkpoint", str(out / "none-seed0" / "checkpoint-9")])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--methods", "none,sam"], "methods"),
        (["--methods", "none,none"], "methods"),
        (["--seeds", "a,b"], "seeds"),
        (["--seeds", "-1"], "--seeds"),  # was numpy's "expected non-negative integer", after the output folder was made
        (["--seeds", "4294967296"], r"--seeds.*\[0, 2\*\*32\)"),  # numpy's seeds stop at 2**32 - 1
        (["--task", "a/b"], "task"),
        (["--max_steps", "0"], "max_steps"),
        (["--hidden_size", "30"], "hidden_size"),
        (["--max_grad_norm", "1.0"], "max_grad_norm"),
        (["--strong_weight_decay", "-1"], "strong_weight_decay"),
        (["--max_eval_samples", "0"], "max_eval_samples"),
        # checked on the real split before anything runs (was: after the earlier methods had trained)
        (["--p", "11", "--outer_fraction", "0.01", "--methods", "none,neuralgrok"], "outer_fraction"),
        (["--p", "12"], "prime"),  # was checked after the output folder had been created
        (["--train_fraction", "1.0"], "train_fraction"),
    ],
)
def test_recipe_rejects_bad_arguments_before_writing(tmp_path, argv, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(argv + ["--output_dir", str(out)])
    assert not out.exists()
