"""Slow reproduction: on a+b mod 97 with the papers' 2-layer width-128 decoder, NeuralGrok reaches 95% test accuracy
in fewer optimizer steps than the Adam baseline (median of 3 seeds; the paper reports 900 vs 1650 with Adam and
weight decay 1e-3).

Setting: the reference code's optimizer, torch.optim.Adam with L2 weight decay 1e-3 added to the (transformed)
gradient on every parameter, for both methods; lr 3e-3 instead of 1e-3 so that the baseline groks within ~1000 steps
on CPU; everything else is the reference setup (50% train split, D_outer = 2% of it, batch 512, betas (0.9, 0.98),
10 warm-up steps, T = 4, c = 1, clip 1 after the transform), with a (32, 32) amplifier. Runs stop at the target;
test accuracy is evaluated every 20 steps. About 13 minutes on an idle 2-core CPU.

With AdamW (decoupled weight decay 1.0) instead, NeuralGrok memorised faster but its median steps to 95% were not
lower (560 vs 520); see docs/neuralgrok.md.
"""

import pytest

from hf_ext.recipes.neuralgrok import main


@pytest.mark.slow
def test_neuralgrok_groks_faster_than_adam_on_a_plus_b_mod_97(tmp_path):
    results = main(
        [
            "--task", "a+b", "--p", "97", "--methods", "none,neuralgrok", "--seeds", "0,1,2",
            "--coupled_weight_decay", "true", "--weight_decay", "1e-3", "--learning_rate", "3e-3", "--max_steps", "1200", "--eval_steps", "20", "--logging_steps", "20",
            "--torch_threads", "1", "--output_dir", str(tmp_path / "repro"), "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    base = results["methods"]["none"]
    ng = results["methods"]["neuralgrok"]
    print(
        f"median steps to 95%: Adam {base['median_steps_to_target']}, NeuralGrok {ng['median_steps_to_target']}; "
        f"s/step Adam {base['median_seconds_per_step']:.4f}, NeuralGrok {ng['median_seconds_per_step']:.4f} "
        f"({ng['cost_per_step_vs_none']:.2f}x)"
    )
    assert ng["median_steps_to_target"] is not None, "NeuralGrok did not reach 95% within 1200 steps"
    assert base["median_steps_to_target"] is None or ng["median_steps_to_target"] < base["median_steps_to_target"]
    # per-step overhead is bounded: transform + (1/T) outer step cost less than 4 baseline steps
    assert ng["cost_per_step_vs_none"] < 4.0
