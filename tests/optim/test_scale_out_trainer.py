"""hf_ext's optimizers through transformers' Trainer with accelerate's FSDP2 plugin on 2 gloo ranks (one process on the
global batch, exact resume from SHARDED and FULL state dict checkpoints), and the update metrics under FSDP2: every
value equals the one-process value on every rank (they were per-shard sums, and the callback crashed with a probe
batch)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_ext.optim import gradient_momentum_cosine, l2_update_norm, relative_update_norms


def _close(a, b, rel=1e-5, abs_=1e-7):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close(a[k], b[k], rel, abs_)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, rel, abs_)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == pytest.approx(b, rel=rel, abs=abs_)


@pytest.mark.distributed
def test_trainer_fsdp2_matches_one_process_resumes_exactly_and_metrics_are_whole_tensor(tmp_path, run_two_ranks):
    run_two_ranks("tests/optim/scripts/scale_out_trainer.py", tmp_path)
    ranks = json.loads((tmp_path / "scale_out_trainer.json").read_text())
    assert len(ranks) == 2
    for r in ranks:
        funcs = r["functions"]
        assert "error" not in funcs, funcs["error"]
        for sharded, single in zip(funcs["fsdp2"], funcs["one_process"]):
            assert single["l2"] > 1e-2  # the comparison is not vacuous
            _close(sharded, single)
        trainer = r["trainer"]
        assert "error" not in trainer, trainer["error"]
        for name in ("lion_ar", "rotational_adamw"):
            res = trainer[name]
            assert res["fsdp"] and res["param_type"] == "DTensor", res
            assert res["moved"] > 1e-3 and res["diff"] < 1e-5, (name, res)
        metrics, single = trainer["lion_ar"]["metrics"], trainer["lion_ar"]["metrics_one_process"]
        assert len(metrics) == len(single) == 4
        _close(metrics, single)
        assert trainer["resume_SHARDED_STATE_DICT"] < 1e-6
        assert trainer["resume_FULL_STATE_DICT"] < 1e-6
    assert ranks[0]["trainer"]["lion_ar"]["metrics"] == ranks[1]["trainer"]["lion_ar"]["metrics"]


def test_metric_functions_single_process_path_unchanged():
    """Plain tensors keep the per-tensor float64 path: same numbers as the direct formulas."""
    torch.manual_seed(0)
    old = {"a": torch.randn(5, 3), "b": torch.randn(4, 2), "c": torch.randn(3)}
    new = {k: v + 0.1 * torch.randn_like(v) for k, v in old.items()}
    expect = math.sqrt(sum(float((new[k].double() - old[k].double()).pow(2).sum()) for k in old))
    assert l2_update_norm(old.values(), new.values()) == expect
    rel = relative_update_norms(old, new)
    assert list(rel) == ["a", "b"]
    for k in rel:
        assert rel[k] == float((new[k].double() - old[k].double()).norm()) / float(old[k].double().norm())
    g, m = [torch.randn(5), torch.randn(2, 2)], [torch.randn(5), torch.randn(2, 2)]
    gv, mv = torch.cat([t.flatten() for t in g]).double(), torch.cat([t.flatten() for t in m]).double()
    assert gradient_momentum_cosine(g, m) == pytest.approx(float(gv @ mv / (gv.norm() * mv.norm())), rel=1e-12)
