"""Fixes of the lp19 audit.

F1 "Pair first, then FP8" (`hf_ext.fp8.convert(convert_to_layer_parallel(model, ..., mode="block"))`, merged pairs)
   put only q/k/v and the MLP down projection of each pair in FP8: the pair's output projection (`BranchwiseLinear`)
   and gate / up weights (`BranchwiseGatedMLP`) are batched einsums, not `nn.Linear`, and were skipped silently
   (56% of the pair's GEMM weights stayed in high precision, absent from `model.hf_ext_fp8["modules"]`). `convert`
   now splits them into one `nn.Linear` per branch (the same function; the state dict keeps the stacked names) and
   converts those like every other linear, with both the torchao and the emulated backend; `ao_recipe_kwargs` does
   the same split for accelerate's conversion.
"""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.fp8 import ao_recipe_kwargs, convert, fp8_converted_modules
from hf_ext.models.layer_parallel import convert_to_layer_parallel

_SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2)  # fmt: skip
# the GEMMs of a merged block pair once converted: q/k/v, down, and two branches each of o, gate and up
_PAIR_FP8 = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj",
    "self_attn.o_proj.branches.0", "self_attn.o_proj.branches.1", "mlp.gate_branches.0", "mlp.gate_branches.1",
    "mlp.up_branches.0", "mlp.up_branches.1",
}  # fmt: skip


def _paired(**overrides):
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(**{**_SHAPE, **overrides})).eval()
    return convert_to_layer_parallel(source, start=1, end=3, mode="block")  # blocks: layer, merged pair, layer


def _ids():
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def _is_fp8(module):
    return type(module).__name__ in ("Float8Linear", "Fp8Linear")


def test_split_branches_is_the_same_function_with_the_same_state_dict():
    model = _paired(attention_bias=True, mlp_bias=True)
    ids = _ids()
    reference = model(ids, labels=ids)
    reference.loss.backward()
    ref_grad = model.model.layers[1].mlp.gate_weight.grad.clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pair = model.model.layers[1]
    assert pair.self_attn.o_proj.split_branches() == ["branches.0", "branches.1"]
    assert pair.mlp.split_branches() == ["gate_branches.0", "gate_branches.1", "up_branches.0", "up_branches.1"]
    assert pair.self_attn.o_proj.weight is None and pair.mlp.gate_weight is None and pair.mlp.up_bias is None
    assert all(type(m) is nn.Linear for m in (*pair.self_attn.o_proj.branches, *pair.mlp.gate_branches))
    model.zero_grad()
    out = model(ids, labels=ids)
    torch.testing.assert_close(out.logits, reference.logits)  # float32 rounding
    out.loss.backward()
    torch.testing.assert_close(pair.mlp.gate_branches[1].weight.grad, ref_grad[1])
    # the state dict is that of the unsplit model: same keys, shapes and values; loading goes both ways
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    plain = _paired(attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    plain.load_state_dict(after)
    torch.testing.assert_close(plain(ids).logits, reference.logits, rtol=0, atol=0)
    changed = {k: v + 1.0 for k, v in before.items()}
    model.load_state_dict(changed)
    assert torch.equal(pair.mlp.up_branches[0].bias, changed["model.layers.1.mlp.up_bias"][0])
    assert torch.equal(pair.self_attn.o_proj.branches[1].weight, changed["model.layers.1.self_attn.o_proj.weight"][1])


@pytest.mark.parametrize("backend", ["torchao", "emulated"])
def test_convert_puts_every_gemm_of_a_merged_block_pair_in_fp8(backend):
    model = _paired()
    ids = _ids()
    with torch.no_grad():
        high = model(ids).logits
    convert(model, backend)
    pair = model.model.layers[1]
    gemms = {n for n, m in pair.named_modules() if _is_fp8(m)}
    assert gemms == _PAIR_FP8
    # no weight of the pair is left outside an FP8 linear (the norms' gains are 1-D)
    left = [
        n for n, p in pair.named_parameters() if p.dim() >= 2 and not _is_fp8(pair.get_submodule(n.rsplit(".", 1)[0]))
    ]
    assert left == []
    listed = model.hf_ext_fp8["modules"]
    assert {f"model.layers.1.{n}" for n in _PAIR_FP8} <= set(listed)
    assert sorted(listed) == sorted(fp8_converted_modules(model))
    assert len(listed) == 7 + 10 + 7
    out = model(ids, labels=ids)
    assert ((out.logits - high).norm() / high.norm()).item() < 0.1
    assert not torch.equal(out.logits, high)  # really quantised
    out.loss.backward()
    assert pair.self_attn.o_proj.branches[0].weight.grad is not None
    assert pair.mlp.up_branches[1].weight.grad is not None


@pytest.mark.parametrize("backend", ["torchao", "emulated"])
def test_a_converted_block_pair_model_saves_as_the_plain_model(backend, tmp_path):
    plain = _paired()
    model = convert(_paired(), backend)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded.model.layers[1].self_attn.o_proj).__name__ == "BranchwiseLinear"
    assert reloaded.model.layers[1].mlp.gate_weight.shape == (2, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, plain(_ids()).logits, rtol=0, atol=0)
    # a plain checkpoint loads into the converted model (a resumed run)
    state = {k: v + 0.5 for k, v in plain.state_dict().items()}
    model.load_state_dict(state, strict=False)
    assert torch.equal(model.model.layers[1].mlp.gate_branches[1].weight, state["model.layers.1.mlp.gate_weight"][1])


def test_skip_modules_apply_to_the_branch_names_and_bad_sizes_change_nothing():
    model = convert(_paired(), "emulated", skip_modules=["gate_branches", "up_branches"])
    pair = model.model.layers[1]
    assert isinstance(pair.mlp.gate_weight, nn.Parameter) and pair.mlp.up_weight is not None  # left as they were
    assert _is_fp8(pair.self_attn.o_proj.branches[1])
    model = convert(_paired(), "torchao", skip_modules=["o_proj"])
    assert model.model.layers[1].self_attn.o_proj.weight is not None
    assert _is_fp8(model.model.layers[1].mlp.gate_branches[0])

    model = _paired(intermediate_size=40)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.gate_branches\.0 \(32->40\)"):
        convert(model, "torchao", skip_modules=["layers\\.[02]", "down_proj"])
    assert model.model.layers[1].mlp.gate_weight is not None and not fp8_converted_modules(model)
    convert(model, "torchao", pad_inner_dim=True)
    assert _is_fp8(model.model.layers[1].mlp.up_branches[1])


def test_ao_recipe_kwargs_reaches_the_branch_weights():
    from torchao.float8 import convert_to_float8_training

    model = _paired()
    handler = ao_recipe_kwargs(model)  # what accelerate gets: its filter sees nn.Linear modules only
    convert_to_float8_training(model, module_filter_fn=handler.module_filter_func, config=handler.config)
    pair = model.model.layers[1]
    assert {n for n, m in pair.named_modules() if _is_fp8(m)} == _PAIR_FP8


def test_a_peft_wrapped_branch_weight_is_refused_by_name():
    peft = pytest.importorskip("peft")
    model = _paired()
    config = peft.LoraConfig(r=2, target_modules=[], target_parameters=["mlp.gate_weight"])
    wrapped = peft.get_peft_model(model, config)
    with pytest.raises(ValueError, match=r"mlp\.base_layer .*peft.*skip_modules=\['gate_branches', 'up_branches'\]"):
        convert(wrapped, "emulated")
    assert not fp8_converted_modules(wrapped)
    convert(wrapped, "emulated", skip_modules=["gate_branches", "up_branches"])
    pair = wrapped.base_model.model.model.layers[1]
    assert pair.mlp.base_layer.gate_weight is not None and _is_fp8(pair.self_attn.o_proj.branches[0])
