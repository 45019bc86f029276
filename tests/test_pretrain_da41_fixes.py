"""Pretrain: a block or a sample longer than a learned position table is refused before any work (audit pass 35)."""

from __future__ import annotations

import pytest

from hf_ext.recipes.pretrain import main

TINY = ["--fp8_backend", "none", "--max_steps", "1", "--max_eval_blocks", "1", "--per_device_train_batch_size", "2",
        "--disable_tqdm", "true", "--report_to", "none"]  # fmt: skip


def _saved_model(folder, tokenizer, model_type: str, positions: int) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=positions)
    if model_type == "llama":
        sizes["intermediate_size"] = 64
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **sizes)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _folder_with_results(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pretrain_results.json").write_text('{"eval_loss": 1.0}')
    return out


def test_block_longer_than_loaded_gpt2_positions_is_refused(tmp_path, small_tokenizer):
    """A gpt2 with 32 positions and --block_size 64 failed in the first training step with a bare `IndexError: index
    out of range in self` (its position embedding), after the earlier run's results were removed. Now refused naming
    --block_size and the limit, the earlier results kept."""
    model = _saved_model(tmp_path / "model", small_tokenizer, "gpt2", positions=32)
    out = _folder_with_results(tmp_path)
    with pytest.raises(ValueError, match=r"--block_size 64 is longer than the 32 learned absolute positions"):
        main([*TINY, "--model_name_or_path", model, "--block_size", "64", "--output_dir", str(out)])
    assert (out / "pretrain_results.json").read_text() == '{"eval_loss": 1.0}'


def test_sample_longer_than_fresh_gpt2_positions_is_refused(tmp_path):
    """A fresh gpt2 has max(block_size, 256) * 4 = 1024 positions: --max_new_tokens 1100 trained the whole run, then
    failed generating the sample with a bare `IndexError` (the results without a sample). Now refused before any
    work, naming --max_new_tokens and the largest value that fits."""
    out = _folder_with_results(tmp_path)
    args = ["--model_type", "gpt2", "--hidden_size", "32", "--num_attention_heads", "2", "--num_hidden_layers", "1",
            "--vocab_size", "512", "--block_size", "32", "--prompt", "The return value of",
            "--max_new_tokens", "1100", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match=r"--max_new_tokens 1100: the sample's --prompt \((\d+) tokens\)") as err:
        main([*TINY, *args])
    assert "1024 learned absolute positions" in str(err.value)
    assert (out / "pretrain_results.json").read_text() == '{"eval_loss": 1.0}'
    assert not (out / "model.safetensors").exists()


def test_position_limit_only_for_learned_tables(tmp_path, small_tokenizer):
    """gpt2's table bounds the block (a block equal to it passes); a RoPE llama has no table and is not limited."""
    from transformers import AutoModelForCausalLM

    from hf_ext.recipes._common import check_learned_positions, learned_position_limit

    gpt2 = AutoModelForCausalLM.from_pretrained(_saved_model(tmp_path / "g", small_tokenizer, "gpt2", 32))
    llama = AutoModelForCausalLM.from_pretrained(_saved_model(tmp_path / "l", small_tokenizer, "llama", 32))
    assert learned_position_limit(gpt2) == 32 and learned_position_limit(llama) is None
    check_learned_positions(gpt2, "gpt2", 32, prompt_tokens=4, max_new_tokens=28)
    check_learned_positions(llama, "llama", 64, prompt_tokens=4, max_new_tokens=100)
    check_learned_positions(gpt2, "gpt2", 32, prompt_tokens=4, max_new_tokens=29)  # the last new token is not fed
    with pytest.raises(ValueError, match="--max_new_tokens <= 29"):
        check_learned_positions(gpt2, "gpt2", 32, prompt_tokens=4, max_new_tokens=30)


def test_tokenizer_without_eos_is_refused_naming_the_flag(tmp_path, small_tokenizer):
    """A --tokenizer_name without an eos_token was refused by pack_dataset with "set tokenizer.eos_token or
    add_eos=False": no pretrain flag sets add_eos. Now the refusal names --tokenizer_name, before the data."""
    import copy

    tok = copy.deepcopy(small_tokenizer)
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "tok")
    out = _folder_with_results(tmp_path)
    args = ["--model_type", "llama", "--hidden_size", "32", "--num_attention_heads", "2", "--num_hidden_layers", "1",
            "--block_size", "32", "--tokenizer_name", str(tmp_path / "tok"), "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match=r"--tokenizer_name .* has no eos_token") as err:
        main([*TINY, *args])
    assert "add_eos" not in str(err.value)
    assert (out / "pretrain_results.json").read_text() == '{"eval_loss": 1.0}'
