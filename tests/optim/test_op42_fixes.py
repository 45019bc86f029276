"""Audit op42: the warmup recipe refuses `--block_size 1` before any work.

A 1-token block has no next token for the causal-LM loss (the shifted labels are empty), so the loss is a mean over no
tokens: every arm trained on NaN losses and the recipe finished with exit code 0, `eval_loss` NaN in
`warmup_results.json` and an empty train-loss curve.
"""

import pytest


def test_warmup_recipe_refuses_a_one_token_block_before_writing_anything(tmp_path):
    from hf_ext.recipes.warmup import main

    out = tmp_path / "out"
    argv = ["--arms", "lion_a_no_warmup", "--hidden_size", "32", "--intermediate_size", "64",
            "--num_attention_heads", "2", "--vocab_size", "512", "--block_size", "1", "--max_eval_blocks", "5",
            "--use_cpu", "true", "--disable_tqdm", "true", "--max_steps", "2", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match=r"--block_size must be >= 2 \(got 1\)"):
        main(argv)
    assert not out.exists()
