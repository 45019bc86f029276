"""The update-metric functions in one process. Their 2-rank FSDP2 values (and hf_ext's optimizers through transformers'
Trainer with accelerate's FSDP2 plugin) are checked by
test_trainer_fsdp2_matches_one_process_resumes_exactly_and_metrics_are_whole_tensor in
tests/optim/test_two_rank_checks.py, one launch shared with the other 2-rank checks of hf_ext.optim."""

from __future__ import annotations

import math

import pytest
import torch

from hf_ext.optim import gradient_momentum_cosine, l2_update_norm, relative_update_norms


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
