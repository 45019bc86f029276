"""Second mutation round of the kurtosis monitor and the health callback: statistics of sites made of several
modules, the tensor-parallel and data-parallel reductions, the per-site summary over layers, and the callback's
decision state. Expected values are float64 formulas over the full tensors written out here; the distributed
collectives are simulated in one process (a second rank's contributions are recorded, then replayed)."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl

from hf_ext.fp8 import Fp8HealthCallback, KurtosisMonitor

from .test_mutation_kills import _combine


class _Fixed(torch.nn.Module):
    """A module whose output is a preset tensor: the monitored site's values are chosen by the test."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        return self.value


class _Block(torch.nn.Module):
    """A block with q/k/v projections (the `qkv` site: three modules) and an MLP up projection (`mlp_intermediate`)."""

    def __init__(self):
        super().__init__()
        self.self_attn = torch.nn.Module()
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self.self_attn, name, _Fixed())
        self.mlp = torch.nn.Module()
        self.mlp.up_proj = _Fixed()

    def forward(self, x):
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(self.self_attn, name)(x)
        self.mlp.up_proj(x)
        return x


def _monitor(num_layers, sites):
    blocks = torch.nn.ModuleList([_Block() for _ in range(num_layers)])
    return blocks, KurtosisMonitor(blocks, sites=sites, layers=list(blocks))


def _forward(blocks, monitor):
    with torch.no_grad(), monitor.active():
        for block in blocks:
            block(torch.zeros(1))


def _kurtosis64(x: torch.Tensor) -> float:
    """Mean over samples (rows) of `mean(x^4) / mean(x^2)^2`, in float64."""
    x = x.double().reshape(x.shape[0], -1)
    return float(((x**4).mean(1) / (x**2).mean(1) ** 2).mean())


def test_a_site_of_several_modules_has_the_max_abs_of_their_union():
    """`qkv` is the q, k and v outputs together: its `max_abs` is the largest |x| over the three (7 here), and the
    next step's saturation counts elements above that amax. Summing the modules' amaxes (2 + 7 + 3) went unnoticed
    because no test had a site of several modules with different maxima."""
    blocks, monitor = _monitor(1, ["qkv"])
    attn = blocks[0].self_attn
    q = torch.tensor([[0.5, -2.0, 1.0], [1.5, 0.25, -1.0]])
    k = torch.tensor([[7.0, 1.0, -3.0], [2.0, -0.5, 0.5]])
    v = torch.tensor([[3.0, 1.0, 1.0], [-1.0, 2.0, 0.5]])
    attn.q_proj.value, attn.k_proj.value, attn.v_proj.value = q, k, v
    _forward(blocks, monitor)
    stats = monitor.collect()
    assert stats["qkv/max_abs/layer_0"] == 7.0
    assert stats["qkv/kurtosis/layer_0"] == pytest.approx(_kurtosis64(torch.cat([q, k, v], dim=1)), rel=1e-12)
    attn.v_proj.value = torch.tensor([[8.0, 1.0, 1.0], [-1.0, 2.0, 0.5]])  # one element of 18 above 7
    _forward(blocks, monitor)
    assert monitor.collect()["qkv/saturation/layer_0"] == pytest.approx(1 / 18)


def test_max_abs_summary_over_layers_is_the_max_not_the_mean():
    """`collect` documents `"<site>/max_abs/avg"` as the max over layers (the other statistics: the mean)."""
    blocks, monitor = _monitor(2, ["mlp_intermediate"])
    blocks[0].mlp.up_proj.value = torch.tensor([[1.0, -5.0], [2.0, 0.5]])
    blocks[1].mlp.up_proj.value = torch.tensor([[9.0, 1.0], [-1.0, 3.0]])
    _forward(blocks, monitor)
    stats = monitor.collect()
    assert stats["mlp_intermediate/max_abs/avg"] == 9.0
    rms = [float(((t.double() ** 2).mean(1).sqrt()).mean()) for t in (blocks[0].mlp.up_proj.value,
                                                                     blocks[1].mlp.up_proj.value)]  # fmt: skip
    assert stats["mlp_intermediate/rms/avg"] == pytest.approx(sum(rms) / 2, rel=1e-12)


def test_tensor_parallel_shards_are_measured_as_the_whole_tensor(monkeypatch):
    """Under tensor parallelism each rank holds half of the `mlp_intermediate` columns. Per-sample sums and the
    per-tensor amax (which sets the FP8 scale, hence the underflow) must be all-reduced over the tensor-parallel group
    before any ratio. Rank b's collectives are recorded, then replayed into rank a's; the reference is float64 over
    the whole tensor: rank a's values (<= 1) all flush to zero under the scale set by rank b's outlier (1e6), rank b's
    (>= 10) do not, so the underflow is 8 / 16. Without the amax reduction rank a used its own scale (underflow 0);
    without the sums, kurtosis and rms were those of rank a's half."""
    part_a = torch.linspace(0.1, 1.0, 8).reshape(2, 4)
    part_b = torch.tensor([[10.0, 12.0, 1e6, 20.0], [11.0, 13.0, 17.0, 19.0]])
    full = torch.cat([part_a, part_b], dim=1).double()

    def run(part):
        blocks, monitor = _monitor(1, ["mlp_intermediate"])
        blocks[0].mlp.up_proj.value = part
        monitor.enable()
        monitor._tp_groups = {("mlp_intermediate", 0): "tensor-parallel group"}  # what a DTensor-split up_proj gives
        with torch.no_grad():
            blocks[0](torch.zeros(1))
        monitor.disable()
        return monitor.collect()

    recorded = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, op=None, group=None: recorded.append(t.clone()))
    run(part_b)  # "rank b"
    assert recorded, "the sharded site performed no collective"
    replay = iter(recorded)
    monkeypatch.setattr(
        torch.distributed,
        "all_reduce",
        lambda t, op=torch.distributed.ReduceOp.SUM, group=None: _combine(t, next(replay), op),
    )
    stats = run(part_a)  # "rank a", reduced with rank b
    assert next(replay, None) is None
    # x^2 and x^4 are formed in float32 (then summed in float64): rel 1e-6
    assert stats["mlp_intermediate/kurtosis/layer_0"] == pytest.approx(_kurtosis64(full), rel=1e-6)
    rms = float((full**2).mean(1).sqrt().mean())
    assert stats["mlp_intermediate/rms/layer_0"] == pytest.approx(rms, rel=1e-6)
    assert stats["mlp_intermediate/max_abs/layer_0"] == 1e6
    threshold = 1e6 * 2.0**-10 / 448  # |x| * 448 / amax <= 2^-10 flushes to zero in E4M3
    assert part_a.max() < threshold < part_b.min()
    assert stats["mlp_intermediate/underflow/layer_0"] == pytest.approx(8 / 16)


def test_ranks_that_measured_different_site_sets_are_refused(monkeypatch):
    """Data-parallel pooling needs every rank to hold the same (site, layer) rows; the row-count all-reduce detects
    a rank with one more row and raises instead of summing mismatched tables."""
    blocks, monitor = _monitor(1, ["mlp_intermediate"])
    blocks[0].mlp.up_proj.value = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    _forward(blocks, monitor)

    def all_reduce(t, op=None, group=None):
        if t.numel() == 4 and op == torch.distributed.ReduceOp.MAX:  # the row check: the other rank has 2 rows
            torch.maximum(t, torch.tensor([2.0, -2.0, t[2], -t[2]], dtype=t.dtype), out=t)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    with pytest.raises(RuntimeError, match="different \\(site, layer\\) sets"):
        monitor.collect()


def test_ranks_with_as_many_rows_but_other_sites_are_refused(monkeypatch):
    """Equal row counts are not enough: a rank that measured another (site, layer) set of the same size (a skipped
    block on one rank, another on the other) must be refused too, not summed row by row with this rank's table."""
    import zlib

    blocks, monitor = _monitor(2, ["mlp_intermediate"])
    for b in blocks:
        b.mlp.up_proj.value = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    _forward(blocks, monitor)
    other = float(zlib.crc32(repr([("mlp_intermediate", 0), ("mlp_intermediate", 5)]).encode()))
    seen = []

    def all_reduce(t, op=None, group=None):
        if t.numel() == 4 and op == torch.distributed.ReduceOp.MAX:  # same count (2 rows), other keys
            seen.append(float(t[0]))
            torch.maximum(t, torch.tensor([t[0], -t[0], other, -other], dtype=t.dtype), out=t)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    with pytest.raises(RuntimeError, match="different \\(site, layer\\) sets"):
        monitor.collect()
    assert seen == [2.0]


def test_a_changed_number_of_blocks_is_refused_at_enable():
    """A monitor follows module swaps inside its blocks, but a model whose block list shrank must be monitored by a
    new monitor: `enable` raises instead of measuring the remaining blocks under the old per-layer site layouts."""
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([_Block() for _ in range(3)])
    monitor = KurtosisMonitor(model, sites=["mlp_intermediate"])
    assert len(monitor.layers) == 3
    del model.layers[2]
    with pytest.raises(RuntimeError, match="now has 2 blocks"):
        monitor.enable()


def test_reset_drops_observations_of_an_unfinished_forward():
    """`reset` drops everything not yet collected, including site observations of a forward that stopped before
    the end of its block (e.g. an exception inside the layer): they must not leak into the next step's statistics."""
    blocks, monitor = _monitor(1, ["mlp_intermediate"])
    up = blocks[0].mlp.up_proj
    up.value = torch.tensor([[1e3, 1.0], [1.0, 1.0]])
    with torch.no_grad(), monitor.active():
        up(torch.zeros(1))  # the site fires, the block's end never comes
    monitor.reset()
    up.value = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    _forward(blocks, monitor)
    stats = monitor.collect()
    assert stats["mlp_intermediate/max_abs/layer_0"] == 3.0
    assert stats["mlp_intermediate/kurtosis/layer_0"] == pytest.approx(_kurtosis64(up.value), rel=1e-12)


# ------------------------------------------------------------------------------------------------------ callback
def _stats(site_values: dict[str, float]) -> dict[str, float]:
    """What `KurtosisMonitor.collect` returns for layer 0 of the given sites (kurtosis only), with the averages."""
    out = {f"{site}/kurtosis/layer_0": v for site, v in site_values.items()}
    out.update({f"{site}/kurtosis/avg": v for site, v in site_values.items()})
    return out


def _step(cb, tmp_path, step, site_values) -> TrainerControl:
    control = TrainerControl()
    cb._check(_stats(site_values), step, SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(), control)
    return control


def test_only_alert_sites_can_raise_alerts(tmp_path):
    """`alert_sites` restricts which sites' kurtosis can alert: a blow-up at a monitored but non-alerting site is
    ignored (not even a baseline is kept for it), one at an alerting site stops training."""
    cb = Fp8HealthCallback(alert_sites=["qkv"], baseline_steps=1, action="stop")
    assert not _step(cb, tmp_path, 1, {"qkv": 3.0, "qkv_input": 3.0}).should_training_stop
    assert not _step(cb, tmp_path, 2, {"qkv": 3.0, "qkv_input": 1e4}).should_training_stop
    assert cb.alerts == [] and set(cb.baselines) == {"qkv/layer_0"}
    assert _step(cb, tmp_path, 3, {"qkv": 1e4, "qkv_input": 3.0}).should_training_stop


def test_relative_threshold_is_strict(tmp_path):
    """An alert needs kurtosis *above* `relative_threshold` x baseline: exactly 10 x 3 = 30 is still healthy."""
    cb = Fp8HealthCallback(baseline_steps=1, relative_threshold=10.0, action="stop")
    _step(cb, tmp_path, 1, {"qkv": 3.0})
    assert not _step(cb, tmp_path, 2, {"qkv": 30.0}).should_training_stop and cb.alerts == []
    assert _step(cb, tmp_path, 3, {"qkv": 30.5}).should_training_stop


def test_an_alert_streak_vetoes_checkpoints_only_for_the_rollback_action(tmp_path):
    """With `action="rollback"` a checkpoint taken during an alert streak would hold the diverging state and is
    skipped; with "warn" (training goes on) the regular checkpoints must still be written."""
    for action, vetoed in (("warn", False), ("rollback", True)):
        cb = Fp8HealthCallback(baseline_steps=1, action=action, patience=3)
        _step(cb, tmp_path, 1, {"qkv": 3.0})
        control = _step(cb, tmp_path, 2, {"qkv": 500.0})
        assert cb._streak == 1 and cb.rollback_request is None
        control.should_save = True
        cb.on_log(None, SimpleNamespace(log_history=[], global_step=2), control)
        assert cb.vetoes_save() is vetoed and control.should_save is not vetoed, action


def test_restoring_an_older_checkpoint_state_never_lowers_the_rollback_count(tmp_path):
    """`train_with_rollback` restores the callback from the checkpoint it rolls back to, which was saved before the
    rollbacks: the count of rollbacks done must survive that, or `max_rollbacks` would never be reached."""
    cb = Fp8HealthCallback(baseline_steps=1, action="rollback", max_rollbacks=1)
    os.makedirs(tmp_path / "checkpoint-1")
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")  # complete: a rollback target
    _step(cb, tmp_path, 1, {"qkv": 3.0})
    saved = json.loads(json.dumps(cb.state_dict()))  # checkpoint-1's state: no rollback yet
    assert _step(cb, tmp_path, 2, {"qkv": 500.0}).should_training_stop and cb.rollbacks == 1
    cb.rollback_request = None
    cb.load_state_dict(saved)  # resumed from checkpoint-1
    assert cb.rollbacks == 1 and cb.lr_scale == 0.5
    assert _step(cb, tmp_path, 2, {"qkv": 500.0}).should_training_stop
    assert cb.rollback_request is None and cb.rollbacks == 1  # limit reached: a plain stop
