"""Transformer Engine FP8 attention (`convert(backend="te", fp8_attention=True)`): early requirement errors, the
transformers registration, the per-call plan (which calls TE can run) and the bhsd -> bshd adapter on CPU; the TE
kernel itself in gpu-marked tests."""

import copy
import sys

import pytest
import torch
from torch import nn

from hf_ext.fp8 import (
    TE_ATTENTION_NAME,
    build_te_attention_forward,
    convert,
    fp8_converted_modules,
    register_te_attention,
    te_attention_forward,
    te_attention_plan,
)
from hf_ext.models.fog import FogConfig

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_fog(**kw):
    from hf_ext.models.fog import FogForCausalLM

    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**{**TINY, "intermediate_size": 96, **kw}))


# ------------------------------------------------------------------------------------------------ early errors
def test_te_fp8_attention_without_cuda_is_an_early_requirement_error():
    model = tiny_fog()
    impl = model.config._attn_implementation
    with pytest.raises(ValueError, match=r"compute capability 9\.0\+.*Transformer Engine.*No CUDA device"):
        convert(model, "te", fp8_attention=True)
    # nothing changed
    assert not fp8_converted_modules(model) and type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert model.config._attn_implementation == impl and not hasattr(model, "hf_ext_fp8")
    with pytest.raises(ValueError, match="torchao has no FP8 attention"):
        convert(model, "torchao", fp8_attention=True)
    plain = nn.Sequential(nn.Linear(16, 16))  # no transformers config: refused before converting anything
    with pytest.raises(ValueError, match="needs a transformers model"):
        convert(plain, "emulated", fp8_attention=True)
    assert type(plain[0]) is nn.Linear


def test_te_fp8_attention_without_transformer_engine_is_an_import_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine ...
    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # ... without Transformer Engine
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)
    model = tiny_fog()
    with pytest.raises(ImportError, match=r"Transformer Engine is not installed.*backend='emulated'"):
        convert(model, "te", fp8_attention=True)
    assert not fp8_converted_modules(model)


# ------------------------------------------------------------------------------------------------ registration
def test_te_attention_is_registered_with_transformers_interfaces():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert register_te_attention() == TE_ATTENTION_NAME == "te_fp8_dpa"
    assert ALL_ATTENTION_FUNCTIONS.get_interface(TE_ATTENTION_NAME, None) is te_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS[TE_ATTENTION_NAME] is sdpa_mask
    model = tiny_fog()
    model.set_attn_implementation(TE_ATTENTION_NAME)
    assert model.config._attn_implementation == TE_ATTENTION_NAME


# ------------------------------------------------------------------------------------------------ per-call plan
def _mask(config, ids, attention_mask=None, position_ids=None):
    """The mask transformers builds for an attention implementation using the SDPA mask format."""
    from transformers.masking_utils import create_causal_mask

    config = copy.copy(config)
    config._attn_implementation = "sdpa"
    embeds = torch.zeros(*ids.shape, 8)
    if position_ids is None:
        position_ids = torch.arange(ids.shape[1])[None].expand_as(ids)
    return create_causal_mask(config, embeds, attention_mask, cache=None, position_ids=position_ids)


def _qk(batch, q_len, kv_len=None, head_dim=16, dtype=torch.bfloat16):
    return torch.zeros(batch, 4, q_len, head_dim, dtype=dtype), torch.zeros(
        batch, 2, kv_len or q_len, head_dim, dtype=dtype
    )


def test_te_attention_plan_on_transformers_masks():
    config = FogConfig.fog(**TINY)
    ids = torch.ones(2, 8, dtype=torch.long)
    q, k = _qk(2, 8)
    assert te_attention_plan(q, k, _mask(config, ids)) == ("causal", None)
    assert te_attention_plan(q, k, _mask(config, ids, torch.ones(2, 8, dtype=torch.long))) == ("causal", None)
    right = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    mask_type, te_mask = te_attention_plan(q, k, _mask(config, ids, right))
    assert mask_type == "padding_causal" and te_mask.shape == (2, 1, 1, 8)
    assert torch.equal(te_mask[:, 0, 0], right == 0)  # TE: True = padded
    # left padding (batched generate), packed sequences, KV-cache steps, odd token counts, dtypes, head sizes
    assert te_attention_plan(q, k, _mask(config, ids, right.flip(1))) is None
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]] * 2)
    assert te_attention_plan(q, k, _mask(config, ids, position_ids=packed)) is None
    assert te_attention_plan(*_qk(2, 1, kv_len=9), None) is None
    assert te_attention_plan(*_qk(3, 7), None) is None  # 21 tokens: the te backend runs this forward without FP8
    assert te_attention_plan(*_qk(2, 8, dtype=torch.float32), None) is None
    assert te_attention_plan(*_qk(2, 8, head_dim=24), None) is None
    assert te_attention_plan(q, k, torch.zeros(2, 1, 8, 8)) is None  # a float (additive) mask


# ------------------------------------------------------------------------------------------------ the adapter
class TorchDotProductAttention(nn.Module):
    """Transformer Engine's `DotProductAttention.forward` contract, computed with torch SDPA (CPU reference for the
    adapter): Q/K/V "bshd", `num_gqa_groups` KV heads, `attn_mask_type` causal / padding_causal with `True` = padded
    key, padded query rows zero-filled, output `(b, s, h * d)`."""

    def __init__(self, heads, groups, scale):
        super().__init__()
        self.heads, self.groups, self.scale, self.calls = heads, groups, scale, []

    def forward(self, q, k, v, attention_mask=None, attn_mask_type="causal", qkv_format="sbhd"):
        assert qkv_format == "bshd" and q.shape[2] == self.heads and k.shape[2] == self.groups
        self.calls.append(attn_mask_type)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k, v = (t.repeat_interleave(self.heads // self.groups, dim=1) for t in (k, v))
        b, h, s, d = q.shape
        keep = torch.ones(s, s, dtype=torch.bool).tril()[None, None]
        if attn_mask_type == "padding_causal":
            keep = keep & ~attention_mask
        else:
            assert attn_mask_type == "causal" and attention_mask is None
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=self.scale)
        if attn_mask_type == "padding_causal":
            out = out.masked_fill(attention_mask[:, :, 0, :, None], 0.0)
        return out.transpose(1, 2).reshape(b, s, h * d)


def _torch_kernel(module, query, key, scaling):
    kernel = module.__dict__.get("_test_kernel")
    if kernel is None:
        kernel = module.__dict__["_test_kernel"] = TorchDotProductAttention(query.shape[1], key.shape[1], scaling)
    return kernel


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, intermediate_size=128))


@pytest.mark.parametrize("make, scale", [(lambda: tiny_fog(softmax_scale=0.125), 0.125), (tiny_llama, 16**-0.5)])
def test_te_attention_adapter_matches_sdpa_in_a_model(make, scale):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = "te_fp8_dpa_torch_kernel_test"
    AttentionInterface.register(name, build_te_attention_forward(_torch_kernel))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    ref = make().to(torch.bfloat16)
    ref.set_attn_implementation("sdpa")
    model = copy.deepcopy(ref)
    model.set_attn_implementation(name)
    ids = torch.randint(0, 128, (2, 8))
    right = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        for mask in (None, right):
            a, b = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
            valid = (mask if mask is not None else torch.ones_like(ids)).bool()
            torch.testing.assert_close(a[valid].float(), b[valid].float(), rtol=0.02, atol=0.02)
        calls = model.model.layers[0].self_attn.__dict__["_test_kernel"].calls
        assert calls == ["causal", "padding_causal"]
        assert model.model.layers[1].self_attn.__dict__["_test_kernel"].scale == scale
        # generate: the 8-token prefill runs through the kernel, the KV-cache steps through SDPA; same tokens
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
        torch.testing.assert_close(out, ref.generate(ids, max_new_tokens=3, do_sample=False))
        assert calls[2:] == ["causal"]


# ------------------------------------------------------------------------------------------------ GPU (TE)
def _te_or_skip():
    te = pytest.importorskip("transformer_engine.pytorch")
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("Transformer Engine FP8 attention needs compute capability 9.0+")
    return te


def gpu_fog():
    # head size 128 (cuDNN's FP8 attention), GQA 2 query heads per KV head, FOG's fixed softmax scale
    model = tiny_fog(hidden_size=512, num_attention_heads=4, num_key_value_heads=2, intermediate_size=1024)
    return model.cuda().to(torch.bfloat16)


@pytest.mark.gpu
def test_te_fp8_attention_logits_close_to_bf16_sdpa_on_gpu():
    _te_or_skip()
    ref = gpu_fog()
    ref.set_attn_implementation("sdpa")
    linears_only = convert(copy.deepcopy(ref), "te")
    model = convert(copy.deepcopy(ref), "te", fp8_attention=True)
    assert model.config._attn_implementation == TE_ATTENTION_NAME
    assert model.hf_ext_fp8["te_recipe"].fp8_dpa and not linears_only.hf_ext_fp8["te_recipe"].fp8_dpa
    ids = torch.randint(0, 128, (8, 64), device="cuda")
    with torch.no_grad():
        a, b, c = model(ids).logits.float(), ref(ids).logits.float(), linears_only(ids).logits.float()
    assert "_hf_ext_te_dot_product_attention" in model.model.layers[0].self_attn.__dict__
    assert ((a - b).norm() / b.norm()).item() < 0.1  # FP8 GEMMs + FP8 attention vs BF16
    assert not torch.equal(a, c)  # the attention BMMs are in FP8 too
    # a right-padded batch runs TE's padding_causal FP8 attention; real tokens stay close to BF16 SDPA
    right = torch.ones_like(ids)
    right[1, 40:] = 0
    with torch.no_grad():
        a, b = model(ids, attention_mask=right).logits.float(), ref(ids, attention_mask=right).logits.float()
    real = right.bool()
    assert ((a[real] - b[real]).norm() / b[real].norm()).item() < 0.1


@pytest.mark.gpu
def test_te_fp8_attention_generates_with_padding_and_cache_on_gpu():
    _te_or_skip()
    model = convert(gpu_fog(), "te", fp8_attention=True).eval()
    ids = torch.randint(0, 128, (4, 8), device="cuda")
    left = torch.ones_like(ids)
    left[0, :3] = 0
    with torch.no_grad():
        model(torch.randint(0, 128, (3, 7), device="cuda"))  # 21 tokens: BF16 GEMMs and SDPA, no TE assertion
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
        padded = model.generate(ids, attention_mask=left, max_new_tokens=5, do_sample=False)
    assert out.shape == padded.shape == (4, 13)


@pytest.mark.gpu
def test_te_fp8_attention_trains_on_gpu():
    _te_or_skip()
    model = convert(gpu_fog(), "te", fp8_attention=True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 128, (8, 64), device="cuda")
    losses = []
    for _ in range(6):
        loss = model(ids, labels=ids).loss
        loss.backward()
        assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
