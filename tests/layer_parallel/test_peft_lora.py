"""LoRA (peft) on layer-paired models: what a user fine-tuning a converted model with adapters gets."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel Auto classes)
from hf_ext.models.layer_parallel import convert_to_layer_parallel

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.no_grad()
def test_lora_on_merged_sublayer_pairs_trains_merges_and_reloads(source, ids, tmp_path):
    base = convert_to_layer_parallel(source, 0, 4).eval()  # merged "sublayer" pairs: plain (wide) nn.Linear layers
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)).eval()
    # every projection of the 3 blocks (2 merged pairs + 1 layer) got an adapter
    assert sum(name.endswith("lora_A") for name, _ in peft_model.named_modules()) == 3 * len(TARGETS)
    adapted = peft_model(ids).logits
    assert (adapted - source(ids).logits).abs().max() > 1e-3  # the adapters change the output
    peft_model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded.eval()(ids).logits, adapted, atol=1e-5, rtol=0)  # reloads with SDPA, not eager
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=0)


BLOCK_PARAMETERS = ["o_proj.weight", "mlp.gate_weight", "mlp.up_weight"]


def test_block_pairs_refuse_branchwise_modules_as_target_modules(source):
    """In "block" pairs the output projection (`BranchwiseLinear`) and the MLP's gate / up weights keep a branch axis:
    peft refuses them as `target_modules` (they are not `nn.Linear`); `target_parameters` adapts them (next test)."""
    with pytest.raises(ValueError, match="BranchwiseLinear"):
        get_peft_model(convert_to_layer_parallel(source, 0, 4, mode="block"), LoraConfig(r=4, target_modules=TARGETS))


def test_lora_on_block_pairs_adapts_each_branch_through_target_parameters(source, ids, tmp_path):
    """peft's `target_parameters` treats the branch axis like an expert axis: one rank-r adapter per branch, i.e. per
    source layer, on the output projection and the MLP's gate and up weights; q/k/v and the (joint) down projection
    are plain `nn.Linear` targets. Trains, saves, reloads and merges like the sublayer case."""
    base = convert_to_layer_parallel(source, 0, 4, mode="block").eval()
    base.save_pretrained(tmp_path / "base")
    before = base(ids).logits
    config = LoraConfig(
        r=2,
        target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
        target_parameters=BLOCK_PARAMETERS,
        init_lora_weights=False,
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(base, config).eval()
    wrappers = [  # peft nests the wrappers of two parameters of one module (the MLP's gate and up weights)
        (name.removeprefix("base_model.model.model.").replace(".base_layer", ""), module)
        for name, module in peft_model.named_modules()
        if type(module).__name__ == "ParamWrapper"
    ]
    # 2 block pairs x (o_proj, gate, up), one adapter per branch; the unpaired layer's o_proj is a plain weight
    assert len(wrappers) == 7
    assert {(name, w.parameter_name, w.num_experts) for name, w in wrappers} == {
        *((f"layers.{i}.self_attn.o_proj", "weight", 2) for i in (0, 1)),
        *((f"layers.{i}.mlp", p, 2) for i in (0, 1) for p in ("gate_weight", "up_weight")),
        ("layers.2.self_attn.o_proj", "weight", 1),
    }

    # The adapted output projection of a pair is branchwise: branch b applies W_b + delta_b, each delta of rank r.
    o_proj = dict(wrappers)["layers.0.self_attn.o_proj"]
    delta = o_proj.get_delta_weight("default")
    weight = o_proj.get_param()
    assert delta.shape == weight.shape == (2, source.config.hidden_size, source.config.hidden_size)
    assert [torch.linalg.matrix_rank(delta[b]).item() for b in range(2)] == [2, 2]
    x = torch.randn(3, 2 * weight.shape[-1], generator=torch.Generator().manual_seed(2))
    expected = torch.einsum("nbi,boi->nbo", x.view(3, 2, -1), weight + delta)
    torch.testing.assert_close(o_proj(x), expected, atol=1e-6, rtol=0)

    adapted = peft_model(ids).logits
    with peft_model.disable_adapter():
        torch.testing.assert_close(peft_model(ids).logits, before, atol=1e-6, rtol=0)
    assert (adapted - before).abs().max() > 1e-3

    # One training step moves the adapters only.
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    # A and B of: q/k/v/down in 3 blocks, o_proj/gate/up in 2 pairs, o_proj in the unpaired layer
    assert all("lora_" in n for n in trainable) and len(trainable) == 2 * (3 * 4 + 2 * 3 + 1)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    with torch.enable_grad():
        peft_model.train()
        peft_model(ids, labels=ids).loss.backward()
        optimizer.step()
    peft_model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)
    moved = [n for n, p in peft_model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert any("o_proj.lora_" in n for n in moved) and any("mlp.lora_" in n for n in moved)

    trained = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(reloaded.eval()(ids).logits, trained, atol=1e-5, rtol=0)
    merged = reloaded.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.o_proj).__name__ == "BranchwiseLinear"
    torch.testing.assert_close(merged(ids).logits, trained, atol=1e-5, rtol=0)
