"""`per_sample_gradients` (DP-SGD's per-sample gradients) on padded batches, whatever the model's attention.

Each row's gradient is that of the same sequence alone, without its padding, computed here with one ordinary
backward pass per sequence in float64. Models left at transformers' default attention (sdpa) crashed under `vmap` on
any padded batch; eager attention gave NaN for left-padded rows in float64; a right-padded row whose labels were not
-100 at the padding counted the padding as targets; the hooks of `enable_input_require_grads` crashed `torch.func`.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.federated import per_sample_gradients
from hf_ext.federated.trainer import PrivateTrainingArguments
from hf_ext.models.fog import FogConfig, FogForCausalLM

# transformers' eager attention takes its softmax in float32 even for a float64 model, and sdpa's float64 backward
# rounds differently from eager: a padded row differs from its sequence alone by rounding at about 1e-7 of the largest
# entry, in an order that depends on the CPU's vector width (a padding error is of the order of the entries)
_TOL = dict(rtol=1e-5, atol=1e-7)

SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)  # fmt: skip


def _lora(arch: str, attn: str, dtype=torch.float64):
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation=attn))
    else:
        model = FogForCausalLM(FogConfig.fog(**SHAPE, attn_implementation=attn))
    model = get_peft_model(model.to(dtype), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # non-zero B so that every LoRA matrix has a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def _batch():
    """Rows: no padding, left padding, right padding with labels -100 there, right padding with labels = ids there."""
    ids = torch.randint(1, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, 6:] = 0
    mask[3, 5:] = 0
    labels = ids.clone()
    labels[1, :3] = -100
    labels[2, 6:] = -100
    return ids, labels, mask


def _alone(model, ids, labels, mask):
    """Per-row gradients of the row's real tokens alone, one backward pass each."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    for i in range(ids.shape[0]):
        keep = mask[i].bool()
        loss = model(input_ids=ids[i][keep][None], labels=labels[i][keep][None]).loss
        rows.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))
    return {n: torch.stack([r[n] for r in rows]) for n in params}


@pytest.mark.parametrize("arch", ["llama", "fog"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_padded_row_gets_the_gradient_of_its_sequence_alone(arch, attn):
    model = _lora(arch, attn)
    model.train()
    ids, labels, mask = _batch()
    grads, losses = per_sample_gradients(model, ids, labels, mask)
    expected = _alone(model, ids, labels, mask)
    for name, ref in expected.items():
        torch.testing.assert_close(grads[name], ref, **_TOL, msg=name)
    assert model.base_model.model.config._attn_implementation == attn  # the model's own attention is back
    assert torch.isfinite(losses).all()


def test_a_row_without_any_real_token_has_a_zero_gradient():
    model = _lora("llama", "eager")
    ids, labels, mask = _batch()
    mask[0] = 0
    grads, _ = per_sample_gradients(model, ids, labels, mask)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert torch.count_nonzero(g[0]) == 0, name
    expected = _alone(model, ids[1:], labels[1:], mask[1:])
    for name, ref in expected.items():
        torch.testing.assert_close(grads[name][1:], ref, **_TOL, msg=name)


def test_input_require_grads_hooks_do_not_break_it_and_stay_registered():
    model = _lora("llama", "sdpa", torch.float32)
    model.enable_input_require_grads()
    hooks = dict(model.get_input_embeddings()._forward_hooks)
    assert hooks
    ids, labels, mask = _batch()
    grads, _ = per_sample_gradients(model, ids, labels, mask)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert dict(model.get_input_embeddings()._forward_hooks) == hooks


def test_activation_checkpointing_is_refused_early_for_dp_sgd(tmp_path):
    model = _lora("llama", "eager", torch.float32)
    model.base_model.model.activation_checkpointing_enable()
    model.train()
    ids, labels, mask = _batch()
    with pytest.raises(ValueError, match="activation_checkpointing_disable"):
        per_sample_gradients(model, ids, labels, mask)
    for flag in ("activation_checkpointing", "gradient_checkpointing"):  # the new name and transformers' old alias
        with pytest.raises(ValueError, match="--activation_checkpointing"):
            PrivateTrainingArguments(output_dir=str(tmp_path), dp_clip_norm=1.0, dp_noise_multiplier=1.0,
                                     max_grad_norm=0, report_to="none", use_cpu=True, **{flag: True})  # fmt: skip


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_target_parameters_lora_falls_back_to_one_backward_per_sample(attn):
    """peft's `target_parameters` LoRA sets the weight in place, which torch.func.grad refuses: per-sample gradients
    come from one backward per sample instead (with a warning), with the same padding rules."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation=attn)).double()
    lora = LoraConfig(r=4, target_modules=["q_proj"], target_parameters=["o_proj.weight"])
    model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    assert any("o_proj" in n and "lora_A" in n for n, p in model.named_parameters() if p.requires_grad)
    ids, labels, mask = _batch()
    with pytest.warns(UserWarning, match="one backward pass per sample"):
        grads, losses = per_sample_gradients(model, ids, labels, mask)
    expected = _alone(model, ids, labels, mask)
    assert set(grads) == set(expected)
    for name, ref in expected.items():
        torch.testing.assert_close(grads[name], ref, **_TOL, msg=name)
    alone = [
        model(input_ids=ids[i][mask[i].bool()][None], labels=labels[i][mask[i].bool()][None]).loss for i in range(4)
    ]
    torch.testing.assert_close(losses, torch.stack(alone).detach(), **_TOL)
    assert model.base_model.model.config._attn_implementation == attn
