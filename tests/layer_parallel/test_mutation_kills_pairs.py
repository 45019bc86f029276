"""Mutation-testing gaps of the layer-paired model: the state `convert_to_layer_parallel` hands over (eval mode,
generation settings) and argument checks of the forward pass. Expected values come from the documented contract or
from the source model, never from snapshots of current outputs."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.models.layer_parallel import convert_to_layer_parallel


def _dropout_llama(attn_implementation: str):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.5,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(cfg)  # left in train mode on purpose


@torch.no_grad()
def test_converted_model_is_in_eval_mode_even_from_a_training_source():
    """Documented: `convert_to_layer_parallel` returns the model in eval mode. With attention dropout in the source
    config a model left in train mode gives a different output on every call. Without `eval()` the converted model
    inherited train mode from construction and dropped attention weights at inference."""
    src = _dropout_llama("eager")
    assert src.training
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(3))
    for merge in (True, False):
        lp = convert_to_layer_parallel(src, 0, 2, merge=merge)
        assert not any(m.training for m in lp.modules())
        torch.testing.assert_close(lp(ids).logits, lp(ids).logits, atol=0, rtol=0)


def test_converted_model_keeps_the_source_generation_config():
    """`generate` on the converted model must follow the source's generation settings (eos, lengths, sampling),
    which live in its `generation_config`, not in the model config. Without the copy the converted model used a
    generation config rebuilt from its own config and dropped settings such as a custom eos or `max_new_tokens`."""
    src = _dropout_llama("eager").eval()
    src.generation_config.eos_token_id = 7
    src.generation_config.max_new_tokens = 3
    src.generation_config.repetition_penalty = 1.3
    expected = copy.deepcopy(src.generation_config).to_dict()
    lp = convert_to_layer_parallel(src, 0, 2)
    got = lp.generation_config.to_dict()
    for key in ("eos_token_id", "max_new_tokens", "repetition_penalty"):
        assert got[key] == expected[key], key
    assert lp.generation_config is not src.generation_config  # a copy: editing one leaves the other alone


@torch.no_grad()
def test_forward_refuses_input_ids_and_inputs_embeds_together(source, ids):
    """`LayerParallelModel.forward` takes exactly one of `input_ids` / `inputs_embeds` (as Llama does). Given both,
    one of them would be ignored silently. Without the check the embeddings won and the token ids were dropped."""
    lp = convert_to_layer_parallel(source, pairs=[[1, 2]])
    embeds = lp.get_input_embeddings()(ids)
    with pytest.raises(ValueError, match="exactly one"):
        lp(input_ids=ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one"):
        lp()
    torch.testing.assert_close(lp(inputs_embeds=embeds).logits, lp(ids).logits, atol=0, rtol=0)


def test_from_pretrained_returns_the_loading_info_when_asked(source, tmp_path):
    """`from_pretrained(..., output_loading_info=True)` returns `(model, info)` as in transformers; the override
    forces the info on internally to warn about missing decoder weights and must hand it back only when asked.
    Without that the caller got the bare model and unpacking it failed."""
    from hf_ext.models.layer_parallel import LayerParallelForCausalLM

    convert_to_layer_parallel(source, pairs=[[1, 2]]).save_pretrained(tmp_path)
    model, info = LayerParallelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, LayerParallelForCausalLM) and isinstance(info, dict) and not info["missing_keys"]
    assert isinstance(LayerParallelForCausalLM.from_pretrained(tmp_path), LayerParallelForCausalLM)


def _tp_refusal(model, tp_size, message):
    from transformers import DistributedConfig

    with pytest.raises(ValueError, match=message):
        type(model).maybe_distribute_model(model, DistributedConfig(tp_size=tp_size), mesh_manager=object())
    assert not any(hasattr(p, "device_mesh") for p in model.parameters())


def test_tensor_parallel_refuses_head_counts_it_cannot_split():
    """Tensor parallelism shards heads over the ranks, so `num_attention_heads` and `num_key_value_heads` must be
    divisible by tp_size; the model refuses before sharding any weight. Without the check 4 heads went to 3 ranks."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4)
    _tp_refusal(convert_to_layer_parallel(LlamaForCausalLM(cfg), 0, 2), 3, r"num_attention_heads \(4\) divisible by 3")
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=1,
    )  # fmt: skip
    _tp_refusal(convert_to_layer_parallel(LlamaForCausalLM(cfg), 0, 2), 2, r"num_key_value_heads \(1\) divisible by 2")


def test_tensor_parallel_refuses_block_pairs_with_an_mlp_down_bias():
    """Merged block pairs at TP=2 split the down projection by branch and cannot split its bias (`mlp_bias=True`):
    documented as refused with a clear error before sharding. Without the early check the model went on into
    transformers' sharding."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_bias=True
    )
    _tp_refusal(convert_to_layer_parallel(LlamaForCausalLM(cfg), 0, 2, mode="block"), 2, "mlp_bias")


@torch.no_grad()
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("merge", [True, False])
def test_left_padded_rows_match_the_same_rows_alone(attn_implementation, merge):
    """A batch with a left-padded row must give that row the logits it has alone: the 2-D `attention_mask` reaches the
    paired blocks' masks (the padded keys are never attended). Dropping the mask only showed in the continuous-batching
    test; here the padded row's logits moved by O(1)."""
    src = _dropout_llama(attn_implementation).eval()
    lp = convert_to_layer_parallel(src, 0, 2, merge=merge)
    gen = torch.Generator().manual_seed(5)
    long, short = torch.randint(1, 64, (1, 10), generator=gen), torch.randint(1, 64, (1, 6), generator=gen)
    pad = 4
    ids = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    batched = lp(ids, attention_mask=mask).logits
    torch.testing.assert_close(batched[0], lp(long).logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1, pad:], lp(short).logits[0], atol=1e-5, rtol=1e-5)
