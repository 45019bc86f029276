"""Issue 15 item 7: with activation checkpointing the emulated delayed-scaling backend records each step's amax once
(the recompute inside backward reuses the forward's scales), and gradients equal those without checkpointing."""

import torch

from hf_ext.fp8 import convert
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _model(checkpointing):
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY))
    convert(model, "emulated", scaling="delayed", amax_history_len=8)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def test_checkpointing_records_amax_once_per_step_and_keeps_gradients():
    ids = torch.randint(0, 64, (2, 8))
    plain, ckpt = _model(False), _model(True)
    for _ in range(2):  # two steps: history rows 0 and 1 filled, nothing more
        for model in (plain, ckpt):
            model(input_ids=ids, labels=ids).loss.backward()
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        hist_plain = plain.get_submodule(name).fp8_amax_history
        hist_ckpt = ckpt.get_submodule(name).fp8_amax_history
        assert int((hist_ckpt[:, 0] > 0).sum()) == 2 and int((hist_ckpt[:, 2] > 0).sum()) == 2
        torch.testing.assert_close(hist_ckpt, hist_plain)
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=n)
