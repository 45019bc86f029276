"""`--config_overrides` that contradicts a flag, the tokenizer or --block_size is refused by name; an override of a
field the config names otherwise than the flags (gpt2's n_positions, n_embd) is applied (pd27 F2)."""

import pytest

from hf_ext.recipes.pretrain import ModelArguments, check_config_overrides, fresh_config, main


def _args(model_type, overrides, **flags):
    return ModelArguments(
        model_type=model_type, num_attention_heads=2, hidden_size=32, config_overrides=overrides, **flags
    )


@pytest.mark.parametrize(("model_type", "overrides"), [("llama", "hidden_size=64"), ("gpt2", "n_embd=64")])
def test_an_override_of_a_size_a_given_flag_sets_is_refused(model_type, overrides):
    with pytest.raises(ValueError, match=r"--hidden_size 32 both set the model's hidden_size"):
        check_config_overrides(_args(model_type, overrides))
    check_config_overrides(_args(model_type, overrides.replace("64", "32")))  # the same value: nothing ignored


@pytest.mark.parametrize(("model_type", "key"), [("llama", "max_position_embeddings"), ("gpt2", "n_positions")])
def test_fewer_positions_than_a_block_are_refused(model_type, key):
    with pytest.raises(ValueError, match=f"{key}=16 gives the model fewer positions than a --block_size 32"):
        check_config_overrides(_args(model_type, f"{key}=16"), block_size=32)
    check_config_overrides(_args(model_type, f"{key}=32"), block_size=32)


def test_gpt2s_own_field_names_are_applied():
    config = fresh_config(_args("gpt2", "n_positions=2048"), 256, 32)
    assert config.n_positions == 2048 and config.n_embd == 32


def test_a_vocab_smaller_than_the_tokenizer_is_refused_before_the_data(tmp_path):
    argv = [
        "--model_type", "llama", "--hidden_size", "32", "--num_attention_heads", "2", "--vocab_size", "512",
        "--fp8_backend", "none", "--config_overrides", "vocab_size=100", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="vocab_size=100 is smaller than the tokenizer's 512 tokens"):
        main(argv)
