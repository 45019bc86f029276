"""Mutation-testing kills (mu41) for the pass-35 FogConfig.from_dict override check."""

import pytest
from transformers import AutoConfig

from hf_ext.models.fog import FogConfig


def test_bad_override_is_refused_with_return_unused_kwargs(tmp_path):
    """`return_unused_kwargs=True` makes `from_dict` return `(config, unused)`: the overrides are checked on that
    path too."""
    FogConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(tmp_path)
    for load in (AutoConfig.from_pretrained, FogConfig.from_pretrained):
        with pytest.raises(ValueError, match="FogConfig.hidden_size must be a positive integer"):
            load(tmp_path, hidden_size=-5, return_unused_kwargs=True)
