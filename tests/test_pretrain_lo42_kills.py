"""Pretrain: the sample's fit check counts every token of --prompt (mutation PR2 of pass 35: counting the prompt one
token short survived, since the existing tests sat far from the bound or called `check_learned_positions` directly).

At the exact bound: a fresh gpt2 has 1024 learned positions (4 * max(block_size, 256)); generate() feeds the prompt's P
tokens and all new tokens but the last, so `--max_new_tokens 1024 - P + 1` fits and one more is refused before any
work. Counting P - 1 tokens let `1024 - P + 2` through: the run trained, then the sample failed with an IndexError.
"""

from __future__ import annotations

import pytest

from hf_ext.recipes.pretrain import main

PROMPT = "The return value of the function"
ARGS = ["--fp8_backend", "none", "--max_steps", "1", "--max_eval_blocks", "1", "--per_device_train_batch_size", "2",
        "--disable_tqdm", "true", "--report_to", "none", "--model_type", "gpt2", "--hidden_size", "32",
        "--num_attention_heads", "2", "--num_hidden_layers", "1", "--vocab_size", "512", "--block_size", "32",
        "--prompt", PROMPT]  # fmt: skip


def test_one_new_token_past_the_position_table_is_refused_at_the_exact_bound(tmp_path):
    from hf_ext.data import build_tokenizer

    prompt_tokens = len(build_tokenizer(512)(PROMPT, add_special_tokens=False)["input_ids"])
    assert prompt_tokens >= 2
    allowed = 1024 - prompt_tokens + 1
    out = tmp_path / "out"
    with pytest.raises(
        ValueError,
        match=rf"--max_new_tokens {allowed + 1}: the sample's --prompt \({prompt_tokens} tokens\) .* use "
        rf"--max_new_tokens <= {allowed} or a shorter --prompt",
    ):
        main([*ARGS, "--max_new_tokens", str(allowed + 1), "--output_dir", str(out)])
    assert not (out / "model.safetensors").exists()
