"""`LayerParallelConfig(source_config=model.config, ...)`, the documented way to build a config from a source model,
leaves that model's own config alone."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer_parallel model type)
from hf_ext.models.layer_parallel import LayerParallelConfig


def test_source_model_config_is_not_shared_or_changed():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        attn_implementation="sdpa",
    )  # fmt: skip
    llama = LlamaForCausalLM(cfg).eval()
    config = LayerParallelConfig(source_config=llama.config, lp_start=0, lp_end=2, attn_implementation="eager")
    config.use_cache, config.pad_token_id = False, 7
    model = AutoModelForCausalLM.from_config(config)
    # Before: the source config was the same object, so the source model switched to eager attention and took
    # use_cache=False and pad_token_id=7.
    assert config.source_config is not llama.config
    assert llama.config._attn_implementation == "sdpa"
    assert llama.config.use_cache is True and llama.config.pad_token_id is None
    # The layer-parallel config and model got them.
    assert model.config._attn_implementation == model.config.source_config._attn_implementation == "eager"
    assert model.config.source_config.use_cache is False and model.config.source_config.pad_token_id == 7
