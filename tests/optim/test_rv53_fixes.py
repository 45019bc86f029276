"""Audit pass 42 (rv53): `update/rrc` of peft DoRA layers.

The pass measured a peft LoRA layer's relative representation change as one layer (its effective weight) but left
DoRA layers out of it, so their `lora_A` / `lora_B` factors were still measured as two layers: 0.13, 0.50, 0.26, 0.17
over 4 LionAR steps for an adapted-layer change of a flat 0.025, the very 1/t signature the LoRA fix removed.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("peft")

from .test_op52_fixes import layer_inputs, lora_model  # noqa: E402


def _model(arch: str):
    return lora_model(arch, use_dora=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_update_rrc_of_a_dora_run_is_the_adapted_layers_change(arch):
    """The expected value comes from the DoRA layers' own forward on the probe inputs (bias taken off), not from a
    formula for their weight."""
    from transformers import TrainerControl, TrainerState

    from hf_ext.optim import LionAR, UpdateMetricsCallback

    model, lora = _model(arch)
    assert lora and all(m.use_dora["default"] for m in lora)
    ids = torch.randint(0, 64, (4, 12))
    probe = {"input_ids": ids[:2]}
    opt = LionAR(model, lr=1e-3, weight_decay=1.0)
    cb = UpdateMetricsCallback(probe_batch=probe, plot_path=None)
    state, control = TrainerState(), TrainerControl()

    def outputs(inputs):
        with torch.no_grad():
            outs = [m(inputs[i]).double() for i, m in enumerate(lora)]
        return [o if m.base_layer.bias is None else o - m.base_layer.bias.double() for o, m in zip(outs, lora)]

    expected = []
    for _ in range(4):
        model(input_ids=ids, labels=ids).loss.backward()
        inputs = layer_inputs(model, lora, probe)
        before = outputs(inputs)
        cb.on_pre_optimizer_step(None, state, control, model=model, optimizer=opt)
        opt.step()
        cb.on_optimizer_step(None, state, control, model=model, optimizer=opt)
        opt.zero_grad()
        state.global_step += 1
        after = outputs(inputs)
        rrcs = [float((new - old).norm() / old.norm()) for old, new in zip(before, after)]
        expected.append(sum(rrcs) / len(rrcs))
    got = [row["update/rrc"] for row in cb.history]
    assert all(math.isfinite(v) for v in expected)
    # the factors' value was 0.50 at step 2 for the layers' 0.025 (Llama); float32 forwards: ~1e-6 relative
    assert got == pytest.approx(expected, rel=1e-3)


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


@pytest.mark.parametrize("dora", [False, True])
def test_update_rrc_of_lora_layers_keeps_no_dense_weight_per_layer_between_the_hooks(dora):
    """The LoRA fix kept each LoRA layer's whole effective weight in float64 from `on_pre_optimizer_step` to
    `on_optimizer_step`: 8 bytes per entry of every adapted matrix (Llama-2-7B with q/v LoRA: 64 x 4096 x 4096 x 8 B =
    8.6 GB, where the copies of the trainable factors are 17 MB). The weight before the step is now rebuilt from those
    copies; beside the probe inputs the snapshot holds the copies of the trainable parameters only."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState

    from hf_ext.optim import LionAR, UpdateMetricsCallback

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_dora=dora)
    model = get_peft_model(LlamaForCausalLM(cfg), config)
    ids = torch.randint(0, 64, (2, 8))
    opt = LionAR(model, lr=1e-3)
    cb = UpdateMetricsCallback(probe_batch={"input_ids": ids}, plot_path=None)
    state, control = TrainerState(), TrainerControl()
    model(input_ids=ids, labels=ids).loss.backward()
    cb.on_pre_optimizer_step(None, state, control, model=model, optimizer=opt)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    held = sum(_tensor_bytes(v) for k, v in cb._snap.items() if k != "inputs")
    assert held <= trainable, (held, trainable)  # one dense float64 64 x 64 weight alone is 32768 bytes
    opt.step()
    cb.on_optimizer_step(None, state, control, model=model, optimizer=opt)
    assert math.isfinite(cb.history[-1]["update/rrc"])
