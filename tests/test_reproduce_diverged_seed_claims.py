"""The FOG kurtosis claims and the compliance 'near 0' claim judge a diverged seed (NaN or inf) as 'does not hold'
(audit rv30 F2): their standard error over seeds used `statistics.stdev`, which raises an AttributeError on a NaN or
inf, so `hf-ext reproduce fog` / `compliance` ended with no report once a seed diverged (before e4d2e45 these judges
returned 'does not hold')."""

from __future__ import annotations

import pytest

from hf_ext.reproduce import methods

NAN, INF = float("nan"), float("inf")


def _fog_run(late_llama: float) -> dict:
    return {
        "llama_fp8": {"kurtosis": [1.0, 2.0, late_llama, late_llama]},
        "fog_fp8": {"kurtosis": [1.0, 1.0, 1.0, 1.0]},
        "llama_fp32": {"kurtosis": [1.0, 1.0, 1.0, 1.0]},
    }


def _compliance_run(top_gap: float, low_gap: float) -> dict:
    return {
        "removed_pct": {"news": 60.0, "wiki": 2.0, "code": 5.0},
        "gaps": {"scratch": {"news": top_gap, "wiki": low_gap, "code": low_gap}},
    }


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_diverged_seed_fails_the_claim_instead_of_crashing(bad):
    for judge in (methods._fog_kurtosis, methods._fp8_raises_llama_kurtosis):
        assert judge([_fog_run(4.0), _fog_run(3.0), _fog_run(5.0)])[1]  # the judges still work
        assert judge([_fog_run(4.0), _fog_run(bad), _fog_run(5.0)])[1] is False
    good = [_compliance_run(8.0, 0.5), _compliance_run(9.0, 1.0), _compliance_run(7.0, -0.5)]
    assert methods._dcg_domain_vs_general(good)[1]
    diverged = [_compliance_run(8.0, 0.5), _compliance_run(9.0, bad), _compliance_run(7.0, -0.5)]
    assert methods._dcg_domain_vs_general(diverged)[1] is False
    assert methods._standard_error([1.0]) == 0.0 and methods._standard_error([1.0, 3.0]) == pytest.approx(1.0)
