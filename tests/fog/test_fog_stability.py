"""Slow reproduction: FOG keeps activation kurtosis down in FP8 where a Llama-style block lets it grow.

4-layer Llama-style baseline vs FOG, both with every block linear in FP8 (emulated, delayed scaling) and the attention
BMMs in FP8, under the same high learning rate; FOG also in BF16 (autocast) as its precision reference.
Run with `pytest tests/fog/test_fog_stability.py -m slow -s` to see the numbers.
"""

import json
import time

import pytest
import torch

from hf_ext.fp8 import KurtosisMonitor, convert
from hf_ext.models.fog import FogConfig

STEPS, BATCH, SEQ, LR, EVERY = 100, 8, 64, 1e-2, 10
SIZE = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, swiglu_intermediate_size=192)


def run(config: FogConfig, fp8: bool, batches: torch.Tensor) -> dict:
    from hf_ext.models.fog import FogForCausalLM

    torch.manual_seed(0)
    model = FogForCausalLM._from_config(config, attn_implementation="eager")
    if fp8:
        convert(model, "emulated", scaling="delayed", fp8_attention=True)
    monitor = KurtosisMonitor(model, sites=["qkv_input"])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    losses, kurt = [], []
    start = time.time()
    for i, ids in enumerate(batches):
        monitored = (i + 1) % EVERY == 0
        if monitored:
            monitor.enable()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fp8):
            loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        monitor.disable()
        if monitored:
            kurt.append(monitor.collect()["qkv_input/kurtosis/avg"])
        losses.append(loss.item())
    return {"losses": losses, "kurtosis": kurt, "seconds": time.time() - start}


@pytest.mark.slow
def test_fog_fp8_kurtosis_stays_below_llama_and_tracks_bf16(corpus, small_tokenizer):
    from hf_ext.data import pack_dataset

    ds = pack_dataset(corpus, small_tokenizer, block_size=SEQ)
    batches = torch.tensor(ds["input_ids"][: STEPS * BATCH]).view(STEPS, BATCH, SEQ)
    llama = run(FogConfig.llama_baseline(**SIZE), True, batches)
    fog_fp8 = run(FogConfig.fog(**SIZE), True, batches)
    fog_bf16 = run(FogConfig.fog(**SIZE), False, batches)

    def windows(losses):
        return [sum(losses[i : i + EVERY]) / EVERY for i in range(0, STEPS, EVERY)]

    gaps = [abs(a - b) / b for a, b in zip(windows(fog_fp8["losses"]), windows(fog_bf16["losses"]))]
    report = {
        "steps": [EVERY * (i + 1) for i in range(len(llama["kurtosis"]))],
        "qkv_input_kurtosis_llama_fp8": [round(k, 2) for k in llama["kurtosis"]],
        "qkv_input_kurtosis_fog_fp8": [round(k, 2) for k in fog_fp8["kurtosis"]],
        "loss_windows_llama_fp8": [round(v, 3) for v in windows(llama["losses"])],
        "loss_windows_fog_fp8": [round(v, 3) for v in windows(fog_fp8["losses"])],
        "loss_windows_fog_bf16": [round(v, 3) for v in windows(fog_bf16["losses"])],
        "max_window_gap_fog_fp8_vs_bf16": round(max(gaps), 4),
        "seconds": [round(r["seconds"], 1) for r in (llama, fog_fp8, fog_bf16)],
    }
    print(json.dumps(report))
    k_llama, k_fog = llama["kurtosis"], fog_fp8["kurtosis"]
    # Both start near Gaussian (~2.5); from step 40 on the baseline's outliers grow and FOG's do not.
    assert sum(k_fog) / len(k_fog) < sum(k_llama) / len(k_llama)
    assert all(f < b for f, b in zip(k_fog[3:], k_llama[3:]))
    assert k_llama[-1] / k_llama[0] > 1.5 * (k_fog[-1] / k_fog[0])
    # FOG's FP8 loss tracks its BF16 loss within 3% in every 10-step window.
    assert max(gaps) < 0.03
