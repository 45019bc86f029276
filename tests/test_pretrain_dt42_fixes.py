"""pretrain: `--block_size 1` is refused before any work (a one-token block has no next token to predict)."""

import pytest

from hf_ext.recipes.pretrain import main

TINY = [
    "--hidden_size", "64", "--intermediate_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "4",
    "--per_device_train_batch_size", "8", "--max_eval_blocks", "16", "--max_new_tokens", "8",
    "--model_type", "llama", "--max_steps", "2",
]  # fmt: skip


def test_a_one_token_block_is_refused_before_training(tmp_path):
    """It used to train on blocks whose every label was shifted out (NaN losses), save the model, and only then fail in
    the held-out evaluation with "The evaluation dataset has no token to predict"."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--block_size must be at least 2 tokens .*got 1"):
        main(TINY + ["--block_size", "1", "--output_dir", str(out)])
    assert not out.exists()
