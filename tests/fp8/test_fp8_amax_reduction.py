"""Delayed scaling under data parallelism: the recorded amaxes are those of the whole data-parallel batch, maxed over
the amax reduction group as Transformer Engine does, so every rank holds the same history and a resumed run (whose
checkpoint holds rank 0's buffers) continues exactly."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from hf_ext.fp8 import Fp8Linear, convert
from hf_ext.fp8 import emulation as emu


@pytest.mark.distributed
def test_ranks_record_the_whole_batch_amax_and_resume_exactly(fp8_two_ranks):
    folder, _ = fp8_two_ranks("ddp_emulated")  # scripts/ddp_emulated.py, in the shared two-rank FP8 launch
    rank0, rank1 = json.loads((folder / "ddp_emulated.json").read_text())
    for r in (rank0, rank1):
        for mode in ("ddp", "fsdp2"):  # each rank on half the batch == one process on the whole batch
            got = r[mode]
            assert got["sites"] == 12
            assert got["input_weight_hist_diff"] < 1e-5 and got["grad_hist_ratio_dev"] < 1e-5
            assert got["param_diff"] < 1e-5
        assert r["resume"] == {"param_diff": 0.0, "buffer_diff": 0.0}  # Fp8Trainer, buffers not broadcast
    assert rank0["ddp"]["hist"] == rank1["ddp"]["hist"] and rank0["fsdp2"]["hist"] == rank1["fsdp2"]["hist"]


@pytest.mark.distributed
def test_a_two_rank_checkpoint_resumed_in_one_process_continues_the_two_rank_run(fp8_two_ranks, tmp_path):
    """The 2-rank run's checkpoint-2 resumed in one process at the same global batch: its output-gradient amax column
    is rescaled by 1/2 at resume (each rank's output gradient is twice one process's), so the run goes on with the
    gradient scales it would have had. Before, they were 2x off until the window refilled: the weights ended 1.9e-3
    from the 2-rank run's (measured on this check), now within float rounding."""
    import importlib.util

    from safetensors.torch import load_file

    folder, _ = fp8_two_ranks("ddp_emulated")
    spec = importlib.util.spec_from_file_location(
        "ddp_emulated", Path(__file__).parent / "scripts" / "ddp_emulated.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checkpoint = folder / "resumed" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    resumed = script.trainer_run(str(tmp_path / "one"), 4, resume=str(checkpoint), batch=4)
    two_ranks = load_file(str(folder / "straight" / "checkpoint-4" / "model.safetensors"))
    params = [k for k in two_ranks if "fp8_" not in k]
    assert max(float((resumed[k] - two_ranks[k]).abs().max()) for k in params) < 1e-5
    hist = [k for k in two_ranks if k.endswith("fp8_amax_history")]
    assert hist
    for k in hist:  # one process records half of each rank's output-gradient amax, before and after the resume
        torch.testing.assert_close(resumed[k][:4, 2] * 2, two_ranks[k][:4, 2], rtol=1e-5, atol=0)
        torch.testing.assert_close(resumed[k][:4, :2], two_ranks[k][:4, :2], rtol=1e-5, atol=0)


def test_reduction_takes_the_max_and_keeps_a_nan(monkeypatch):
    """The reduction is a MAX all-reduce of the amaxes; a NaN on any rank makes the reduced amax NaN (as the amax of the
    whole batch would be), whatever the backend's MAX does with NaN."""
    calls = []

    def fake_all_reduce(buf, op=None, group=None):
        calls.append((op, group))
        n = buf.numel() // 2
        other = torch.cat([torch.tensor([7.0, float("-inf")])[:n], torch.tensor([0.0, 1.0])[:n]])  # "rank 1"
        buf.copy_(torch.maximum(buf, other))

    import torch.distributed as dist

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    group = object()
    lin = Fp8Linear(16, 16, amax_reduction_group=group)
    out = emu._reduce_amax(lin, torch.tensor(3.0), torch.tensor(2.0))
    assert out[0] == 7.0 and out[1].isnan()  # max with the other rank; the other rank's NaN wins
    out = emu._reduce_amax(lin, torch.tensor(float("nan")), torch.tensor(2.0))
    assert out[0].isnan()
    assert calls[0] == (dist.ReduceOp.MAX, group)
    lin.amax_reduction_group = None  # default: no process group here, so no collective
    assert emu._reduce_amax(lin, torch.tensor(3.0)) == (torch.tensor(3.0),) and len(calls) == 2


def test_emulated_passes_the_group_to_every_linear_and_reduces_training_forwards_and_backwards(monkeypatch):
    group = object()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    convert(model, backend="emulated", amax_reduction_group=group)
    linears = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 2 and all(m.amax_reduction_group is group for m in linears)
    seen = []
    monkeypatch.setattr(emu, "_reduce_amax", lambda module, *amaxes: seen.append(len(amaxes)) or amaxes)
    model(torch.randn(4, 16)).sum().backward()
    assert seen == [2, 2, 1, 1]  # (input, weight) per forward, output gradient per backward
    seen.clear()
    with torch.no_grad():
        model.eval()(torch.randn(4, 16))
    assert seen == []  # evaluation records nothing, so no rank waits for the others


def test_te_resolves_the_default_group_at_each_forward(monkeypatch):
    """A model converted before the process group exists (convert, then TrainingArguments) still reduces over the
    data-parallel ranks: the te backend's default group is looked up per forward, not fixed at conversion."""
    seen = []

    class FakeLinear(nn.Linear):
        def __init__(self, i, o, bias=True, params_dtype=None, device=None):
            super().__init__(i, o, bias=bias, dtype=params_dtype, device=device)

    class Ctx:
        def __init__(self, **kwargs):
            seen.append(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    te = types.ModuleType("transformer_engine")
    te_pt = types.ModuleType("transformer_engine.pytorch")
    te_pt.Linear, te_pt.autocast = FakeLinear, lambda **kw: Ctx(**kw)
    common = types.ModuleType("transformer_engine.common")
    recipe = types.ModuleType("transformer_engine.common.recipe")
    recipe.DelayedScaling = lambda **kw: kw
    recipe.Format = types.SimpleNamespace(HYBRID="HYBRID", E4M3="E4M3")
    te.pytorch, te.common, common.recipe = te_pt, common, recipe
    for name, mod in [("transformer_engine", te), ("transformer_engine.pytorch", te_pt),
                      ("transformer_engine.common", common), ("transformer_engine.common.recipe", recipe)]:  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    import importlib

    from hf_ext.models.fog import FogConfig, FogForCausalLM

    model = FogForCausalLM(FogConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2))  # fmt: skip
    convert(model, backend="te")  # no process group yet
    group = object()  # ... and now there is one
    monkeypatch.setattr(importlib.import_module("hf_ext.fp8.convert"), "default_amax_group", lambda: group)
    model(torch.randint(0, 64, (1, 8)))
    assert seen[-1]["amax_reduction_group"] is group and seen[-1]["enabled"] is True
