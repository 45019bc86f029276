"""The neuralgrok recipe: a tiny end-to-end run writes results and curves; bad arguments fail before any write."""

import json

import pytest

from hf_ext.recipes.neuralgrok import main


def test_recipe_tiny_run_writes_results_and_png(tmp_path):
    out = tmp_path / "out"
    results = main(
        [
            "--p", "11", "--max_steps", "6", "--eval_steps", "3", "--logging_steps", "3", "--hidden_size", "32",
            "--per_device_train_batch_size", "16", "--seeds", "0", "--outer_fraction", "0.2",
            "--methods", "none,grokfast_ema,neuralgrok", "--output_dir", str(out), "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert (out / "grokking_curves.png").stat().st_size > 10_000
    saved = json.loads((out / "neuralgrok_results.json").read_text())
    assert set(saved["methods"]) == {"none", "grokfast_ema", "neuralgrok"}
    for method, res in results["methods"].items():
        run = res["runs"][0]
        assert run["steps_run"] == 6, method
        assert len(run["curves"]["test"]) == 2 and len(run["curves"]["train_accuracy"]) == 2
        assert run["seconds_per_step"] > 0
        assert res["cost_per_step_vs_none"] > 0
    assert saved["amplifier"]["macs_per_entry"] == 1 * 32 + 32 * 32 + 32 * 1


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--methods", "none,sam"], "methods"),
        (["--seeds", "a,b"], "seeds"),
        (["--task", "a/b"], "task"),
        (["--max_steps", "0"], "max_steps"),
        (["--hidden_size", "30"], "hidden_size"),
        (["--max_grad_norm", "1.0"], "max_grad_norm"),
    ],
)
def test_recipe_rejects_bad_arguments_before_writing(tmp_path, argv, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(argv + ["--output_dir", str(out)])
    assert not out.exists()
