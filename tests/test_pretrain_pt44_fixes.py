"""`--config_overrides` with one key twice (`initializer_range=0.01,initializer_range=0.5`) was accepted and the last
value silently won (the model trained with 0.5), while the same field under its alias too (gpt2's `hidden_size` and
`n_embd`) was refused as set twice. Now refused before any work, naming the key."""

import pytest

from hf_ext.recipes import pretrain


@pytest.mark.parametrize(
    "text", ["initializer_range=0.01,initializer_range=0.5", "initializer_range=0.01, initializer_range =0.01"]
)
def test_a_key_given_twice_is_refused(text):
    with pytest.raises(ValueError, match="sets 'initializer_range' twice"):
        pretrain.parse_config_overrides(text)
    args = pretrain.ModelArguments(model_type="llama", config_overrides=text)
    with pytest.raises(ValueError, match="sets 'initializer_range' twice"):
        pretrain.check_config_overrides(args, 32)


def test_distinct_keys_still_parse():
    assert pretrain.parse_config_overrides("initializer_range=0.01,rms_norm_eps=1e-5") == {
        "initializer_range": 0.01,
        "rms_norm_eps": 1e-5,
    }
