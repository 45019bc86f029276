"""`--config_overrides` accepts transformers' alias names of a config's fields (gpt2: hidden_size for n_embd, as
`GPT2Config(hidden_size=...)` does): they were refused as fields 'a gpt2 config does not have', with no hint of the
real name. Both names of one field are refused, and an alias still meets the flag-conflict and position checks."""

import pytest

from hf_ext.recipes.pretrain import ModelArguments, check_config_overrides, fresh_config


def test_gpt2_alias_override_sets_the_aliased_field():
    args = ModelArguments(model_type="gpt2", config_overrides="hidden_size=48,num_hidden_layers=3,n_head=4")
    check_config_overrides(args, 32)
    config = fresh_config(args, 256, 32)
    assert (config.n_embd, config.n_layer, config.n_head) == (48, 3, 4)
    assert config.hidden_size == 48


def test_both_names_of_one_field_are_refused():
    args = ModelArguments(model_type="gpt2", config_overrides="hidden_size=48,n_embd=64")
    reverse = ModelArguments(model_type="gpt2", config_overrides="n_embd=64,hidden_size=48")
    with pytest.raises(ValueError, match="sets .n_embd. twice: .hidden_size. is the GPT2Config.s alias"):
        check_config_overrides(reverse, 32)
    with pytest.raises(ValueError, match="sets 'n_embd' twice: 'hidden_size' is the GPT2Config's alias"):
        check_config_overrides(args, 32)


def test_an_alias_override_still_meets_the_flag_and_position_checks():
    with pytest.raises(ValueError, match="--config_overrides n_embd=48 and --hidden_size 64 both set"):
        check_config_overrides(ModelArguments(model_type="gpt2", hidden_size=64, config_overrides="hidden_size=48"))
    with pytest.raises(ValueError, match="fewer positions than a --block_size 64"):
        check_config_overrides(ModelArguments(model_type="gpt2", config_overrides="max_position_embeddings=16"), 64)
