"""Pass 42 (op52): update metrics of peft LoRA runs.

`UpdateMetricsCallback`'s `update/rrc` (relative representation change of each linear layer on a probe batch) treated
a LoRA layer's `lora_A` / `lora_B` factors as the linear layers: the zero-initialised B made the value the relative
change of the tiny adapter output (0.50 at step 2 of a LionAR run, decaying like 1/t), ~20x the adapted layer's own
change (0.023, flat), the very shape of the "large early updates" the warmup study looks for. A LoRA layer is now one
layer whose weight is the base weight plus `scaling * B @ A`.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("peft")


def _expected_rrc(x: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor) -> float:
    x = x.double().reshape(-1, x.shape[-1])
    return float((x @ (w1 - w0).t()).norm() / (x @ w0.t()).norm())


def _effective(layer, transposed: bool) -> torch.Tensor:
    """base + scaling * B @ A as an `(out, in)` matrix, computed here from the factors (not through peft's
    get_delta_weight); a `Conv1D` base weight is stored `(in, out)`."""
    a = layer.lora_A["default"].weight.detach().double()
    b = layer.lora_B["default"].weight.detach().double()
    w = layer.base_layer.weight.detach().double()
    return (w.t() if transposed else w) + layer.scaling["default"] * (b @ a)


def lora_model(arch: str, **lora_options):
    """A 1-layer Llama (LoRA on q/v) or GPT-2 (LoRA on the Conv1D c_attn, fan_in_fan_out) and its LoRA layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
        base, targets, transposed = LlamaForCausalLM(cfg), ["q_proj", "v_proj"], False
    else:
        cfg = GPT2Config(
            vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
        )
        base, targets, transposed = GPT2LMHeadModel(cfg), ["c_attn"], True
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=transposed, **lora_options)
    model = get_peft_model(base, config)
    return model, [m for n, m in model.named_modules() if n.split(".")[-1] in targets]


def layer_inputs(model, lora, probe) -> dict[int, torch.Tensor]:
    """The input each layer of `lora` receives on `probe` (by index), captured by forward pre-hooks."""
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0].detach().clone()))
        for i, m in enumerate(lora)
    ]
    with torch.no_grad():
        model(**probe)
    for h in hooks:
        h.remove()
    return inputs


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_update_rrc_of_a_lora_run_is_the_adapted_layers_change(arch):
    from transformers import TrainerControl, TrainerState

    from hf_ext.optim import LionAR, UpdateMetricsCallback

    model, lora = lora_model(arch)
    transposed = arch != "llama"
    assert lora
    ids = torch.randint(0, 64, (4, 12))
    probe = {"input_ids": ids[:2]}
    opt = LionAR(model, lr=1e-3, weight_decay=1.0)
    cb = UpdateMetricsCallback(probe_batch=probe, plot_path=None)
    state, control = TrainerState(), TrainerControl()
    expected = []
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        inputs = layer_inputs(model, lora, probe)
        before = [_effective(m, transposed) for m in lora]
        cb.on_pre_optimizer_step(None, state, control, model=model, optimizer=opt)
        opt.step()
        cb.on_optimizer_step(None, state, control, model=model, optimizer=opt)
        opt.zero_grad()
        state.global_step += 1
        rrcs = [_expected_rrc(inputs[i], before[i], _effective(m, transposed)) for i, m in enumerate(lora)]
        expected.append(sum(rrcs) / len(rrcs))
    got = [row["update/rrc"] for row in cb.history]
    assert all(math.isfinite(v) for v in expected)
    # the old value at step 2 was ~10x these (the lora_B factor grows from zero)
    assert got == pytest.approx(expected, rel=1e-9)
