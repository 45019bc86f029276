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


def test_monitor_skips_the_forwards_recomputed_by_checkpointing(monkeypatch):
    """The kurtosis monitor measured every site twice per monitored step under activation checkpointing (the
    recompute inside backward ran its hooks again): twice the work, and samples counted twice. Now each site is
    observed once per real forward, and the statistics equal those of the run without checkpointing."""
    from hf_ext.fp8 import KurtosisMonitor

    ids = torch.randint(0, 64, (2, 8))
    stats, calls = {}, {}
    for checkpointing in (False, True):
        model = _model(checkpointing)
        monitor = KurtosisMonitor(model)
        seen = calls.setdefault(checkpointing, [])
        observe = monitor._observe
        monkeypatch.setattr(
            monitor, "_observe", lambda site, layer, x, _o=observe, _s=seen: (_s.append(1), _o(site, layer, x))
        )
        with monitor.active():
            model(input_ids=ids, labels=ids).loss.backward()
        stats[checkpointing] = monitor.collect()
    assert len(calls[True]) == len(calls[False]) > 0
    assert stats[True].keys() == stats[False].keys()
    for key, value in stats[False].items():
        assert abs(stats[True][key] - value) <= 1e-6 * max(1.0, abs(value)), key
