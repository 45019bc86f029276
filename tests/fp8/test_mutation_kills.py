"""Mutation-testing gaps of `hf_ext.fp8`: each test checks behaviour against an independent reference (torch's own FP8
casts in float64, a re-implementation of Transformer Engine's delayed scaling, a single-process run over the pooled
data, an uninterrupted run) rather than a snapshot of current outputs."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl

from hf_ext.fp8 import Fp8HealthCallback, Fp8Linear, KurtosisMonitor, fp8_attention_forward, fp8_bmm
from hf_ext.fp8.emulation import E4M3, E5M2, scale_from_amax

FMAX = {E4M3: 448.0, E5M2: 57344.0}


def _qdq64(x: torch.Tensor, amax: float, dtype: torch.dtype, margin: int = 0) -> torch.Tensor:
    """float64 value an FP8 GEMM sees for `x` with the per-tensor scale `fp8_max / amax / 2**margin` (torch's cast)."""
    fmax = torch.finfo(dtype).max
    scale = torch.tensor(fmax / amax, dtype=torch.float32) / 2.0**margin
    return (x.detach().float() * scale).clamp(-fmax, fmax).to(dtype).double() / scale.double()


# ----------------------------------------------------------------------------------------------------- GEMM numerics
def test_scale_is_fp8_max_over_amax_divided_by_two_to_the_margin():
    amax = torch.tensor(3.0)
    for dtype in (E4M3, E5M2):
        for margin in (0, 1, 3):
            assert scale_from_amax(amax, dtype, margin).item() == pytest.approx(FMAX[dtype] / 3.0 / 2**margin)


@pytest.mark.parametrize("fp8_format, margin", [("hybrid", 0), ("e4m3", 0), ("hybrid", 2)])
def test_current_scaling_gemms_match_float64_reference(fp8_format, margin):
    """Forward: E4M3 x E4M3; dgrad and wgrad: the output gradient in E5M2 ("hybrid") or E4M3 ("e4m3") against the
    forward's quantised operands; the bias gradient from the high-precision output gradient (as TE's fused bgrad)."""
    torch.manual_seed(0)
    lin = Fp8Linear(32, 16, bias=True, scaling="current", fp8_format=fp8_format, margin=margin)
    x = (torch.randn(12, 32) * 3).requires_grad_()
    y = lin(x)
    g = torch.randn_like(y) * 1e-3
    y.backward(g)
    grad_dtype = E5M2 if fp8_format == "hybrid" else E4M3
    w = lin.weight.detach()
    xq = _qdq64(x, x.abs().max().item(), E4M3, margin)
    wq = _qdq64(w, w.abs().max().item(), E4M3, margin)
    gq = _qdq64(g, g.abs().max().item(), grad_dtype, margin)
    torch.testing.assert_close(y.double(), xq @ wq.t() + lin.bias.double(), rtol=1e-5, atol=1e-6)
    # gradients are ~1e-3..1e-2: atol 1e-7 allows float32 accumulation, not a different FP8 format (~1e-4)
    torch.testing.assert_close(x.grad.double(), gq @ wq, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lin.weight.grad.double(), gq.t() @ xq, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lin.bias.grad.double(), g.double().sum(0), rtol=1e-6, atol=1e-9)


def _te_ref(window: list[float], last: float, current: float, algo: str) -> float:
    """Transformer Engine's delayed scaling: the amax this step's scale comes from. `window` is the history before
    this step, most recent first (zeros where nothing was recorded yet); "max" ignores NaN entries. A zero or
    non-finite result keeps the last scale's amax; with none yet (first use), the current amax (documented choice)."""
    if algo == "max":
        finite = [v for v in window if not math.isnan(v)]
        ref = max(finite) if finite else 0.0
    else:
        ref = window[0]
    if math.isfinite(ref) and ref > 0:
        return ref
    return last if last > 0 else current


@pytest.mark.parametrize("algo, margin", [("max", 0), ("most_recent", 0), ("max", 1)])
def test_delayed_scaling_over_many_steps_matches_a_transformer_engine_reimplementation(algo, margin):
    """Changing input, weight and gradient magnitudes and a NaN step, with a 3-step window: every step's forward
    output and weight gradient equal the float64 GEMM of the operands quantised with TE's delayed-scaling amax."""
    torch.manual_seed(0)
    n = 3
    lin = Fp8Linear(16, 8, bias=False, scaling="delayed", amax_history_len=n, amax_compute_algo=algo, margin=margin)
    x_mag = [1.0, 4.0, 0.5, 1.0, 2.0, 0.25, 3.0, 1.0]
    w_mul = [1.0, 1.0, 3.0, 1.0, 0.2, 1.0, 2.0, 1.0]
    g_mag = [1.0, 0.1, 10.0, 1.0, 1.0, 0.01, 1.0, 5.0]
    hist = {k: [0.0] * n for k in "xwg"}
    last = {k: 0.0 for k in "xwg"}
    for step in range(len(x_mag)):
        with torch.no_grad():
            lin.weight.mul_(w_mul[step])
        x = torch.randn(6, 16) * x_mag[step]
        if step == 3:
            x[0, 0] = float("nan")  # an overflowed step: a NaN amax enters the input history
        x.requires_grad_()
        y = lin(x)
        g = torch.randn_like(y) * g_mag[step]
        y.backward(g)
        w = lin.weight.detach()
        current = {"x": x.detach().abs().max().item(), "w": w.abs().max().item(), "g": g.abs().max().item()}
        used = {}
        for k in "xwg":
            used[k] = last[k] = _te_ref(hist[k], last[k], current[k], algo)
            hist[k] = [current[k]] + hist[k][:-1]
        if step != 3:
            xq = _qdq64(x, used["x"], E4M3, margin)
            wq = _qdq64(w, used["w"], E4M3, margin)
            gq = _qdq64(g, used["g"], E5M2, margin)
            torch.testing.assert_close(y.double(), xq @ wq.t(), rtol=1e-5, atol=1e-6, msg=f"forward, step {step}")
            torch.testing.assert_close(
                lin.weight.grad.double(), gq.t() @ xq, rtol=1e-5, atol=1e-6, msg=f"wgrad, step {step}"
            )
        lin.weight.grad = None
    torch.testing.assert_close(
        lin.fp8_amax_history, torch.tensor([hist["x"], hist["w"], hist["g"]]).t().float(), equal_nan=True
    )


# ------------------------------------------------------------------------------------------------- attention BMMs
def test_fp8_bmm_quantises_the_output_gradient_to_e5m2():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 8, 16, requires_grad=True)
    b = torch.randn(2, 3, 16, 8, requires_grad=True)
    out = fp8_bmm(a, b)
    g = torch.randn_like(out)
    out.backward(g)
    aq, bq = _qdq64(a, a.abs().max().item(), E4M3), _qdq64(b, b.abs().max().item(), E4M3)
    gq = _qdq64(g, g.abs().max().item(), E5M2)
    torch.testing.assert_close(out.double(), aq @ bq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad.double(), gq @ bq.transpose(-1, -2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad.double(), aq.transpose(-1, -2) @ gq, rtol=1e-5, atol=1e-6)


def test_fp8_attention_with_grouped_kv_heads_matches_a_float64_reference():
    """Query head h reads key/value head h // n_rep (transformers' `repeat_kv` order)."""
    torch.manual_seed(0)
    b, h_kv, n_rep, t, d = 1, 2, 2, 5, 8
    q = torch.randn(b, h_kv * n_rep, t, d)
    k, v = torch.randn(b, h_kv, t, d), torch.randn(b, h_kv, t, d)
    k[:, 1] *= 4  # the two KV heads differ clearly
    module = torch.nn.Module()
    module.num_key_value_groups = n_rep
    module.eval()
    mask = torch.zeros(t, t).masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))[None, None]
    out, _ = fp8_attention_forward(module, q, k, v, mask, scaling=d**-0.5)
    k_rep, v_rep = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    qq, kq = _qdq64(q, q.abs().max().item(), E4M3), _qdq64(k_rep, k_rep.abs().max().item(), E4M3)
    probs = torch.softmax((qq @ kq.transpose(-1, -2)).float() * d**-0.5 + mask, dim=-1)
    ref = _qdq64(probs, probs.abs().max().item(), E4M3) @ _qdq64(v_rep, v_rep.abs().max().item(), E4M3)
    torch.testing.assert_close(out.double(), ref.transpose(1, 2), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- monitor
class _Block(torch.nn.Module):
    """A block whose MLP output is its input times a fixed matrix: a deterministic `mlp_out` site."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.down_proj = torch.nn.Linear(8, 8, bias=False)

    def forward(self, x):
        return x + self.mlp.down_proj(x)


def _toy():
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([_Block(), _Block()])
    return blocks, KurtosisMonitor(blocks, sites=["mlp_out", "activation"], layers=list(blocks))


def _run(blocks, monitor, *xs):
    with torch.no_grad(), monitor.active():
        for x in xs:
            h = x
            for blk in blocks:
                h = blk(h)
    return monitor.collect()


def _combine(tensor, other, op):
    if op == torch.distributed.ReduceOp.MAX:
        torch.maximum(tensor, other, out=tensor)
    else:
        tensor.add_(other)


def test_ddp_pooled_statistics_equal_one_process_over_both_ranks_samples(monkeypatch):
    """`collect` under data parallelism: kurtosis / rms are means over all samples of all ranks (sums reduced before
    the ratio), max_abs the max. Two ranks are simulated in one process: the second rank's all-reduce inputs are
    recorded, then replayed into the first rank's all-reduces; the reference is one monitor over both batches."""
    torch.manual_seed(1)
    xa, xb = torch.randn(2, 4, 8), torch.randn(3, 4, 8) * 5
    xb[0, 0, 0] = 80.0  # rank b alone holds an outlier and the larger amax
    blocks, monitor = _toy()
    ref = _run(blocks, monitor, torch.cat([xa, xb]))

    recorded = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, op=None, group=None: recorded.append(t.clone()))
    _run(blocks, monitor, xb)  # "rank b": its contributions, in call order
    replay = iter(recorded)
    monkeypatch.setattr(
        torch.distributed,
        "all_reduce",
        lambda t, op=torch.distributed.ReduceOp.SUM, group=None: _combine(t, next(replay), op),
    )
    pooled = _run(blocks, monitor, xa)  # "rank a", reduced with rank b
    assert set(pooled) == set(ref)
    for key, value in ref.items():
        if key.split("/")[1] in ("kurtosis", "rms", "max_abs"):
            assert pooled[key] == pytest.approx(value, rel=1e-9), key
    assert pooled["mlp_out/max_abs/avg"] > 10  # rank b's outlier is seen on rank a


def test_saturation_counts_only_elements_strictly_above_the_previous_amax_and_survives_a_restart():
    blocks, monitor = _toy()
    torch.manual_seed(2)
    x = torch.randn(2, 4, 8)
    _run(blocks, monitor, x)
    same = _run(blocks, monitor, x)
    assert same["mlp_out/saturation/layer_0"] == 0.0  # the max element equals, not exceeds, the previous amax
    # a restarted monitor (new object, state from JSON) measures saturation as the uninterrupted one
    restarted_blocks, restarted = _toy()
    restarted.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    y = x * 1.5
    expected = _run(blocks, monitor, y)
    got = _run(restarted_blocks, restarted, y)
    assert expected["mlp_out/saturation/layer_1"] > 0
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_max_abs_over_several_forwards_of_a_step_is_their_max():
    blocks, monitor = _toy()
    torch.manual_seed(3)
    x1, x2 = torch.randn(2, 4, 8), torch.randn(2, 4, 8) * 3
    both = _run(blocks, monitor, x1, x2)
    single = [_run(blocks, monitor, x) for x in (x1, x2)]
    for layer in (0, 1):
        key = f"mlp_out/max_abs/layer_{layer}"
        assert both[key] == pytest.approx(max(s[key] for s in single), rel=1e-12)
        key = f"mlp_out/kurtosis/layer_{layer}"
        assert both[key] == pytest.approx(sum(s[key] for s in single) / 2, rel=1e-9)  # equal batch sizes


# ------------------------------------------------------------------------------------------------------ callback
def _stats(values: dict[int, float]) -> dict[str, float]:
    """What `KurtosisMonitor.collect` returns, for one site (`qkv_input`) and the given layer -> kurtosis."""
    out = {f"qkv_input/kurtosis/layer_{i}": v for i, v in values.items()}
    out["qkv_input/kurtosis/avg"] = sum(values.values()) / len(values)
    return out


def _drive(cb, tmp_path, sequence, start_step=1, checkpoints=()):
    """Feed the callback's decision logic one monitored step per value (layer 0's kurtosis); return the steps at
    which training was told to stop."""
    for step in checkpoints:
        os.makedirs(tmp_path / f"checkpoint-{step}", exist_ok=True)
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")  # complete: a rollback target
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace()
    stops = []
    for i, value in enumerate(sequence):
        control = TrainerControl()
        cb._check(_stats({0: value}), start_step + i, args, state, control)
        if control.should_training_stop:
            stops.append(start_step + i)
    return stops


def test_patience_counts_consecutive_alerting_steps_only(tmp_path):
    cb = Fp8HealthCallback(baseline_steps=1, patience=2, action="stop", relative_threshold=10.0)
    # baseline 3; 50 alerts; a healthy step in between breaks the streak
    assert _drive(cb, tmp_path, [3.0, 50.0, 3.0, 50.0, 3.0]) == []
    assert _drive(cb, tmp_path, [50.0, 50.0, 50.0], start_step=6) == [7, 8]


def test_non_finite_kurtosis_alerts_and_never_enters_the_baseline(tmp_path):
    cb = Fp8HealthCallback(baseline_steps=2, action="stop")
    assert _drive(cb, tmp_path, [float("nan")]) == [1]  # before any baseline exists
    assert _drive(cb, tmp_path, [3.0, 5.0, 39.0, 41.0], start_step=2) == [5]
    assert cb.baselines == {"qkv_input/layer_0": 4.0}  # first two finite values only, then frozen


def test_rollback_lr_scale_compounds_and_the_limit_is_max_rollbacks(tmp_path):
    cb = Fp8HealthCallback(baseline_steps=1, action="rollback", rollback_lr_factor=0.5, max_rollbacks=2)
    assert _drive(cb, tmp_path, [3.0], start_step=1, checkpoints=(1,)) == []
    assert _drive(cb, tmp_path, [500.0], start_step=4) == [4]
    assert cb.rollback_request["checkpoint"].endswith("checkpoint-1") and cb.lr_scale == 0.5
    assert _drive(cb, tmp_path, [500.0], start_step=5) == [5]
    assert cb.rollbacks == 2 and cb.lr_scale == 0.25 and cb.rollback_request["lr_scale"] == 0.25
    cb.rollback_request = None
    assert _drive(cb, tmp_path, [500.0], start_step=6) == [6]  # limit reached: stop, no third rollback
    assert cb.rollback_request is None and cb.rollbacks == 2 and cb.lr_scale == 0.25


def test_rollback_target_is_strictly_before_the_streak_start(tmp_path):
    cb = Fp8HealthCallback(baseline_steps=1, action="rollback", patience=2)
    _drive(cb, tmp_path, [3.0, 3.0, 3.0], checkpoints=(2, 4))
    assert _drive(cb, tmp_path, [500.0, 500.0], start_step=4) == [5]  # checkpoint-4 was saved at the alerting step
    assert cb.rollback_request["checkpoint"].endswith("checkpoint-2")


def test_decisions_after_a_restore_equal_the_uninterrupted_run(tmp_path):
    """Baselines and a streak in progress travel through `state_dict` (JSON): a restored callback stops at the same
    step as one that never stopped."""
    sequence = [3.0, 5.0, 50.0, 60.0, 70.0]
    kw = dict(baseline_steps=2, patience=3, action="stop")
    uninterrupted = Fp8HealthCallback(**kw)
    assert _drive(uninterrupted, tmp_path, sequence) == [5]
    first = Fp8HealthCallback(**kw)
    _drive(first, tmp_path, sequence[:3])
    resumed = Fp8HealthCallback(**kw)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert _drive(resumed, tmp_path, sequence[3:], start_step=4) == [5]
    assert resumed.baselines == uninterrupted.baselines == {"qkv_input/layer_0": 4.0}
