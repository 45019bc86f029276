"""The claim predicates, the aggregation and the CLI of `hf-ext reproduce`, checked with synthetic per-seed numbers.

Every expected verdict is worked out by hand from the claim as written (the claim text in `hf_ext/reproduce/methods.py`,
docs/reproductions.md, and the thresholds the method guides state: docs/federated.md, docs/optim.md), never taken from
the current output. No real reproduction runs here: the per-seed results are dictionaries shaped like each method's
`run` output, and the parallel path runs on threads in place of spawned processes.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time

import pytest

from hf_ext.cli import main
from hf_ext.reproduce import Claim, Reproduction, mean_spread, rejudge, reproduce
from hf_ext.reproduce import methods as M
from hf_ext.reproduce.methods import REPRODUCTIONS

NAN = float("nan")


# ----------------------------------------------------------------------------------------------- per-seed fixtures
def _metadata(steps=140.0, base=3.0, url=2.9, s1=0.30, s3=0.35, max_steps=300, with_url="same"):
    """`steps`: the URL model's steps to the baseline's final loss in the empty context (what the claim is judged
    on); `with_url`: the same with its URL at evaluation (default: `steps`)."""
    return {"max_steps": max_steps, "steps_to_match": steps if with_url == "same" else with_url,
            "steps_to_match_without_context": steps, "final": {"baseline": base, "url_model_with_context": url},
            "share_scale_1": s1, "share_guided": s3}  # fmt: skip


def _grape(z_hard=0.8, weights=None, uniform=3.0, grape=2.8, u_t=None, g_t=None):
    weights = weights or {"a": 0.15, "b": 0.55, "c": 0.15, "d": 0.15}
    u_t, g_t = u_t or {"t_easy": 2.0, "t_hard": 4.0}, g_t or {"t_easy": 1.8, "t_hard": 3.8}
    return {
        "grape": {"mean_target_loss": grape, "target_loss": g_t, "average_domain_weights": weights,
                  "average_task_weights": {"t_easy": 1.0 - z_hard, "t_hard": z_hard}},
        "uniform": {"mean_target_loss": uniform, "target_loss": u_t},
    }  # fmt: skip


def _fog(llama_k=(6.0, 7.0), fog_k=(3.0, 3.5), fp8=3.0, fp32=3.01, llama32_k=(4.0, 4.5)):
    return {"llama_fp8": {"kurtosis": list(llama_k), "final_loss": 3.2}, "fog_fp8": {"kurtosis": list(fog_k), "final_loss": fp8},
            "fog_fp32": {"kurtosis": [3.0, 3.0], "final_loss": fp32},
            "llama_fp32": {"kurtosis": list(llama32_k), "final_loss": 3.2}}  # fmt: skip


def _compliance(scratch=None, continual=None):
    scratch = scratch or {"language": 8.0, "concurrency": 0.5, "datatypes": -0.5, "other": 3.0}
    continual = continual or {"language": 1.0, "concurrency": 0.2, "datatypes": 0.1, "other": 1.0}
    return {"gaps": {"scratch": scratch, "continual": continual},
            "removed_pct": {"language": 100.0, "concurrency": 0.0, "datatypes": 5.0, "other": 50.0}}  # fmt: skip


def _hyperinf(rank1=None, fim=None, **rho):
    """rho: method -> Spearman with the exact GFIM at rank 4 (at 64, at 256, at 1024); fim: the same with the exact FIM;
    rank1: method -> Spearman with the exact influence (GFIM = FIM) at rank 1 (at 64, at 512)."""
    base = {"hyperinf": (0.99, 0.99, 0.99), "datainf": (0.7, 0.55, 0.45), "lissa": (0.7, 0.5, 0.4),
            "tracin": (0.75, 0.73, 0.72), **rho}  # fmt: skip
    base_fim = {"hyperinf": (0.7, 0.65, 0.6), "datainf": (0.5, 0.4, 0.3), "lissa": (0.6, 0.5, 0.4),
                "tracin": (0.55, 0.5, 0.45), **(fim or {})}  # fmt: skip
    base_r1 = {"hyperinf": (1.0, 1.0), "datainf": (0.5, 0.2), "lissa": (0.65, 0.3), "tracin": (0.5, 0.2),
               **(rank1 or {})}  # fmt: skip
    widths, rank1_widths = [64, 256, 1024], [64, 512]

    def keyed(values, ws):
        return {f"{m}@{w}": v[i] for m, v in values.items() for i, w in enumerate(ws)}

    return {"widths": widths, "rho": keyed(base, widths), "rho_fim": keyed(base_fim, widths),
            "rank1_widths": rank1_widths, "rho_rank1": keyed(base_r1, rank1_widths)}  # fmt: skip


def _lp(source=14.0, best=(15.0, 17.0, 50.0), single=(46.0, 18.0, 25.0, 16.0, 15.0)):
    return {"source": source, "best": {i + 1: b for i, b in enumerate(best)}, "mean": {i + 1: b for i, b in enumerate(best)},
            "single": dict(enumerate(single))}  # fmt: skip


def _warmup(adamw=0.35, lion=0.0, adamw_warm=3.0, lion_no=2.95):
    return {"gaps": {"adamw": adamw, "lion_ar": lion},
            "eval_loss": {"adamw_warmup": adamw_warm, "lion_ar_no_warmup": lion_no}}  # fmt: skip


def _fed(full=6.0, lora=1.0, gold=0.8, dp=0.2, c_full=9.0, c_lora=1.1, c_gold=0.9, c_full1=8.0, c_lora1=0.5,
         full_x=0.5, lora_x=0.01):  # fmt: skip
    def e(gain, gain1=0.5, x=0.0):
        return {"exposure_gain": gain, "exposure_gain_1x": gain1, "extraction": x}

    return {
        "federated": {
            "full": e(full, x=full_x),
            "lora": e(lora, x=lora_x),
            "lora+goldfish": e(gold),
            "lora+dp": e(dp),
        },
        "centralized": {"full": e(c_full, c_full1), "lora": e(c_lora, c_lora1), "lora+goldfish": e(c_gold)},
    }


def _ng_method(steps, reached=3, seeds=3, cost=1.0, cpu=100.0, norm=30.0, acc=1.0, drops=0.0, age=3000.0):
    return {"steps_to_target_mean": steps, "steps_to_target_std": 50.0, "reached": reached, "seeds": seeds,
            "cpu_cost_per_step_vs_none": cost, "cpu_seconds_to_target_mean": cpu, "final_weight_norm_mean": norm,
            "test_accuracy_at_window_mean": acc, "test_accuracy_at_window_std": 0.01, "complexity_window": 1200,
            "accuracy_drops_mean": drops, "mean_age_raw_mean": age}  # fmt: skip


def _ng(**over):
    """A merged NeuralGrok summary on which every registered claim holds (the amplifier and the stability ones too)."""
    methods = {
        "none": _ng_method(900.0, cost=1.0, cpu=100.0, norm=34.0, drops=1.33, age=3600.0),
        "none_strong_wd": _ng_method(1200.0, reached=0, norm=1.7, acc=0.01, drops=None),
        "normalize": _ng_method(600.0, cost=1.08, cpu=70.0),
        "grokfast_ema": _ng_method(1200.0, reached=0, drops=None),
        "neuralgrok": _ng_method(470.0, cost=1.3, cpu=80.0, age=2700.0),
        "neuralgrok_next_step": _ng_method(480.0, cost=1.2, cpu=70.0),
    }
    for name, fields in over.items():
        methods[name] = {**methods[name], **fields}
    return {"methods": methods}


#: per method: three seeds on which every registered claim of the method holds
HOLDING = {
    "metadata": [_metadata(140.0), _metadata(150.0, s3=0.33), _metadata(130.0, url=2.85)],
    "grape": [_grape(0.8), _grape(0.7), _grape(0.75)],
    "grape_corpus": [_grape(0.8), _grape(0.7), _grape(0.75)],
    "fog": [_fog(), _fog(fp8=3.02), _fog(fp32=3.0)],
    "compliance": [_compliance(), _compliance(), _compliance()],
    "hyperinf": [_hyperinf(), _hyperinf(), _hyperinf()],
    "layer_parallel": [_lp(), _lp(), _lp()],
    "warmup": [_warmup(0.3, 0.01, lion_no=2.9), _warmup(0.35, -0.02), _warmup(0.4, 0.0)],
    "cubic_newton": [{"cn": 0.5, "cn_momentum": 0.2, "adam": 0.25}] * 3
    + [{"cn": 0.6, "cn_momentum": 0.3, "adam": 0.3}] * 2,
    "federated": [_fed(), _fed(lora=1.1), _fed(full=5.5)],
    "neuralgrok": [_ng()],  # the judges read `neuralgrok_merged(runs)`, patched to return this summary
}

#: inputs that describe the setting rather than measure a claim (never NaN in a real run)
DESCRIPTORS = {"removed_pct", "widths", "rank1_widths", "max_steps", "complexity_window", "reached", "seeds"}


@pytest.fixture
def merged_is_first_run(monkeypatch):
    monkeypatch.setattr(M, "neuralgrok_merged", lambda runs: runs[0])


def _verdict(judge, runs) -> bool | None:
    """The verdict, or None when the judge refused the input with an exception (which also never reads "holds")."""
    try:
        _, ok = judge(runs)
    except Exception:
        return None
    assert isinstance(ok, bool), f"{judge.__name__} returned a verdict of type {type(ok).__name__}"
    return ok


# ------------------------------------------------------------------------- every registered claim: NaN and None
class _Reads(dict):
    """A dict that records which leaves a judge reads (paths of keys, list items counted as read with their list)."""

    def __init__(self, data, path, log):
        super().__init__({k: _track(v, (*path, k), log) for k, v in data.items()})
        self._path, self._log = path, log

    def _note(self, key):
        value = dict.__getitem__(self, key)
        if isinstance(value, list):
            self._log.update((*self._path, key, i) for i in range(len(value)))
        elif not isinstance(value, dict):
            self._log.add((*self._path, key))
        return value

    def __getitem__(self, key):
        return self._note(key)

    def get(self, key, default=None):
        return self._note(key) if key in self else default

    def values(self):
        return [self._note(k) for k in self.keys()]

    def items(self):
        return [(k, self._note(k)) for k in self.keys()]


def _track(value, path, log):
    return _Reads(value, path, log) if isinstance(value, dict) else value


def _set(runs, path, value):
    obj = runs
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _cases():
    return [(method, i) for method, rep in sorted(REPRODUCTIONS.items()) for i in range(len(rep.claims))]


@pytest.mark.parametrize("method,index", _cases())
def test_every_claim_holds_on_its_synthetic_seeds_and_never_on_a_nan_or_missing_number(
    method, index, merged_is_first_run
):
    """A NaN or missing (None) number in any one seed, in any value the claim reads, must not give "holds": the judge
    says "does not hold" or refuses the input. Also: each judge uses the numbers of every seed it is given."""
    claim = REPRODUCTIONS[method].claims[index]
    runs = [copy.deepcopy(r) for r in HOLDING[method]]  # one object per seed (the lists repeat some)
    log: set = set()
    tracked = [_track(r, (i,), log) for i, r in enumerate(runs)]
    assert _verdict(claim.judge, tracked) is True, f"{method}: {claim.name!r} should hold on the synthetic seeds"
    read = sorted((p for p in log if not DESCRIPTORS & set(p)), key=str)
    assert read, f"{method}: {claim.name!r} read no number"
    if method != "neuralgrok":  # the merged summary has no seeds; its per-seed merge has its own tests
        assert {p[0] for p in read} == set(range(len(runs))), f"{claim.name!r} ignores some seeds: read {read}"
    for path in read:
        if not _verdict_depends_on(claim.judge, runs, path):
            continue  # shown in the text only (a spread, another method's number)
        for bad in (NAN, None):
            assert _verdict(claim.judge, _with(runs, path, bad)) is not True, (
                f"{claim.name!r} holds with {path} = {bad}"
            )


def _with(runs, path, value):
    broken = [copy.deepcopy(r) for r in runs]
    _set(broken, path, value)
    return broken


def _verdict_depends_on(judge, runs, path) -> bool:
    """Whether some finite value at `path` turns the verdict (from "holds"), i.e. the claim compares that number."""
    obj = runs
    for key in path:
        obj = obj[key]
    return any(
        _verdict(judge, _with(runs, path, v)) is not True for v in (-1e6, -1.0, 0.0, 1.0, 1e6, 2 * obj, obj / 2)
    )


def test_every_registered_method_has_a_synthetic_fixture():
    assert set(HOLDING) == set(REPRODUCTIONS)


# ------------------------------------------------------------------------------------------ metadata
def test_steps_fraction_counts_a_seed_that_never_reached_the_baseline_and_reads_a_fraction_of_the_steps():
    # 0.47, 0.5, 0.43 of the baseline's 300 steps: "fewer steps", below the 0.8 the judge allows
    assert M._steps_fraction([_metadata(140.0), _metadata(150.0), _metadata(130.0)])[1] is True
    # the URL model needs more steps than the baseline had (1.5x): not fewer steps
    assert M._steps_fraction([_metadata(450.0, max_steps=300)] * 3)[1] is False
    # one seed at 0.1, two never reach the baseline's loss within the budget: not a reproduction of "fewer steps"
    assert M._steps_fraction([_metadata(30.0), _metadata(None), _metadata(None)])[1] is False
    assert M._steps_fraction([_metadata(150.0)] * 3)[0].startswith("0.50 ± 0.00 (0.50..0.50)")


def test_steps_fraction_is_judged_without_the_url_and_reports_both():
    """mc19 finding 1: the speed-up was judged on the URL model scored with its URL (test-time information: the host
    decides most words of the synthetic corpus). It is judged on the empty-context curve; the with-URL number is
    reported beside it."""
    # the auditor's runs: 140 steps with the URL (0.47), 180 / 200 / 200 without (0.64): holds on the empty context
    runs = [_metadata(180.0, with_url=140.0), _metadata(200.0, with_url=140.0), _metadata(200.0, with_url=140.0)]
    text, ok = M._steps_fraction(runs)
    assert ok is True
    assert text.startswith("0.64 ± 0.04 (0.60..0.67) of the baseline's steps without the URL at evaluation")
    assert "(with its URL at evaluation: 0.47 ± 0.00 (0.47..0.47))" in text
    # fast with the URL, but not without it: the claim does not hold (it held on the old with-URL judgement)
    runs = [_metadata(270.0, with_url=140.0)] * 3
    assert M._steps_fraction(runs)[1] is False
    assert M._steps_fraction(runs)[0].startswith("0.90 ± 0.00")
    # per-seed results recorded before the empty-context curve existed (rejudge of an old reproduction.json)
    old = [{k: v for k, v in _metadata(140.0).items() if k != "steps_to_match_without_context"}] * 3
    text, ok = M._steps_fraction(old)
    assert ok is False and text.startswith("without the URL: not measured") and "0.47 ± 0.00" in text


def test_context_and_guidance_judged_on_the_mean_gain():
    assert M._context_helps([_metadata(base=3.0, url=2.9)] * 3)[1] is True
    assert M._context_helps([_metadata(base=2.9, url=3.0)] * 3)[1] is False
    # one seed gains +0.05, two lose 0.2 and 0.1: the mean share falls, guidance does not steer
    runs = [_metadata(s1=0.3, s3=0.35), _metadata(s1=0.3, s3=0.1), _metadata(s1=0.3, s3=0.2)]
    assert M._guidance_steers(runs)[1] is False
    assert M._guidance_steers([_metadata(s1=0.3, s3=None)] * 3) == ("not measured", False)


# ------------------------------------------------------------------------------------------ grape
def test_grape_loss_claims_compare_uniform_minus_grape_and_the_worst_target():
    assert M._grape_beats_uniform([_grape(uniform=3.0, grape=2.8)] * 3)[1] is True
    assert M._grape_beats_uniform([_grape(uniform=2.8, grape=3.0)] * 3)[1] is False
    # GRAPE is better on the easy target but worse on the worst (hard) one: 4.0 vs 4.2
    runs = [_grape(u_t={"t_easy": 2.0, "t_hard": 4.0}, g_t={"t_easy": 1.5, "t_hard": 4.2})] * 3
    assert M._grape_worst_target(runs)[1] is False
    runs = [_grape(u_t={"t_easy": 2.0, "t_hard": 4.0}, g_t={"t_easy": 2.1, "t_hard": 3.9})] * 3
    assert M._grape_worst_target(runs)[1] is True


def test_grape_asserts_only_the_weight_claims_that_hold_beyond_seeds_0_to_2():
    """The mean-loss win over uniform fails on 14 of seeds 0-19, and on 2 of seeds 0-2 (docs/reproductions.md; it held
    on seeds 0-2 before g_alpha / g_tgt used per-device train batches): it is reported, not asserted, beside the
    worst-target comparison."""
    claims = {c.name: c.asserted for c in M.REPRODUCTIONS["grape"].claims}
    assert claims == {
        "task weight moves to the harder (slower-improving) target": True,
        "domain weight moves to that target's source": True,
        "lower mean target loss than uniform mixing at equal steps": False,
        "lower loss on the worst target (group robustness)": False,
    }


def test_grape_task_weight_uses_the_hard_target_and_every_seed():
    # mean of the hard target's weight over seeds: 0.633 > 0.5 (first seed alone: 0.3)
    assert M._grape_task_weight_to_hard([_grape(0.3), _grape(0.8), _grape(0.8)])[1] is True
    # mean 0.467 < 0.5 (first seed alone: 0.9)
    assert M._grape_task_weight_to_hard([_grape(0.9), _grape(0.2), _grape(0.3)])[1] is False


def test_grape_domain_weight_goes_to_the_source_on_every_seed():
    top_b = {"a": 0.15, "b": 0.55, "c": 0.15, "d": 0.15}
    top_c = {"a": 0.1, "b": 0.35, "c": 0.45, "d": 0.1}
    assert M._grape_domain_weight_to_source([_grape(weights=top_b)] * 3)[1] is True
    text, ok = M._grape_domain_weight_to_source([_grape(weights=top_b)] * 2 + [_grape(weights=top_c)])
    assert ok is False and "largest on 2/3 seeds" in text


# ------------------------------------------------------------------------------------------ fog
def test_fog_claims():
    assert M._fog_kurtosis([_fog(llama_k=(6.0, 7.0), fog_k=(3.0, 3.5))] * 3)[1] is True
    assert M._fog_kurtosis([_fog(llama_k=(3.0, 3.5), fog_k=(6.0, 7.0))] * 3)[1] is False
    # judged on the second half of the run: Llama above early only is not "stays below" ...
    assert M._fog_kurtosis([_fog(llama_k=(8.0, 3.0), fog_k=(3.0, 4.0))] * 3)[1] is False
    # ... and FOG above early only (its architecture starts higher) does not hide a late gap
    text, ok = M._fog_kurtosis([_fog(llama_k=(2.0, 6.0), fog_k=(6.0, 4.0))] * 3)
    assert ok is True and "second half of the run: 2.00" in text and "positive on 3/3" in text
    # a mean gap within its standard error over seeds is not enough (late gaps +3, -2.5, +0.1: mean 0.2, SE 1.6)
    spread = [_fog(llama_k=(3.0, 3.0 + g), fog_k=(3.0, 3.0)) for g in (3.0, -2.5, 0.1)]
    assert M._fog_kurtosis(spread)[1] is False
    # the control (reported): FP8 against the baseline's own FP32 run, second half of the run
    text, ok = M._fp8_raises_llama_kurtosis([_fog()] * 3)
    assert ok is True and "second half of the run: 2.50" in text
    assert M._fp8_raises_llama_kurtosis([_fog(llama32_k=(8.0, 9.0))] * 3)[1] is False
    old_runs = [{k: v for k, v in _fog().items() if k != "llama_fp32"}] * 3  # saved before the arm existed
    assert M._fp8_raises_llama_kurtosis(old_runs) == (
        "no Llama FP32 arm in these runs (saved before 2026-12-06)",
        False,
    )
    assert M.FOG.claims[1].asserted is False
    # "within 3%": 20% lower in FP8 is not within 3%, nor is 10% higher
    assert M._fog_tracks_high_precision([_fog(fp8=2.0, fp32=2.5)] * 3)[1] is False
    assert M._fog_tracks_high_precision([_fog(fp8=2.2, fp32=2.0)] * 3)[1] is False
    assert M._fog_tracks_high_precision([_fog(fp8=2.02, fp32=2.0)] * 3)[1] is True


# ------------------------------------------------------------------------------------------ compliance
def test_compliance_gap_is_clearly_positive_on_the_most_removed_domain_and_near_zero_elsewhere():
    text, ok = M._dcg_domain_vs_general([_compliance()] * 3)
    assert ok is True and text.startswith("DCG language: +8.00")
    # the little-removed domains have a large gap too (5 and 6 %): not "near 0 where little was removed"
    scratch = {"language": 10.0, "concurrency": 5.0, "datatypes": 6.0, "other": 3.0}
    assert M._dcg_domain_vs_general([_compliance(scratch=scratch)] * 3)[1] is False
    # a negative gap on the most-removed domain is not "clearly positive"
    scratch = {"language": -0.5, "concurrency": 0.0, "datatypes": 0.0, "other": 0.0}
    assert M._dcg_domain_vs_general([_compliance(scratch=scratch)] * 3)[1] is False
    # "near 0" is judged against the seeds' spread: |mean| 2.33 > 2 but within 2 standard errors (6.35) holds ...
    noisy = [
        _compliance(scratch={"language": 8.0, "concurrency": g, "datatypes": g, "other": 3.0})
        for g in (4.0, -6.0, -5.0)
    ]
    text, ok = M._dcg_domain_vs_general(noisy)
    assert ok is True and "difference per seed" in text
    # ... a steady 3-point gap on the little-removed domains does not ...
    steady = [
        _compliance(scratch={"language": 9.0, "concurrency": g, "datatypes": g, "other": 3.0}) for g in (3.0, 3.2, 2.8)
    ]
    assert M._dcg_domain_vs_general(steady)[1] is False
    # ... while a gap well below 0 (compliance helped: the compliant model sees about 2x the untouched domains'
    # tokens) is no loss; the two-sided rule failed 16 of the 165 3-seed subsets of seeds 0-10, all on this side
    helped = [
        _compliance(scratch={"language": 7.0, "concurrency": g, "datatypes": g, "other": 3.0}) for g in (-2.6, -2.7, -3.0)
    ]
    assert M._dcg_domain_vs_general(helped)[1] is True
    # and the most-removed domain must lead on every seed, not only on the mean
    lagging = [
        _compliance(scratch={"language": h, "concurrency": 0.0, "datatypes": 0.0, "other": 3.0})
        for h in (12.0, 9.0, 0.5)
    ]
    assert M._dcg_domain_vs_general(lagging)[1] is False
    assert M._continual_narrows([_compliance()] * 3)[1] is True  # 8 - 1 on 'language'
    continual = {"language": 9.0, "concurrency": 0.0, "datatypes": 0.0, "other": 0.0}
    assert M._continual_narrows([_compliance(continual=continual)] * 3)[1] is False


# ------------------------------------------------------------------------------------------ hyperinf
def test_hyperinf_must_beat_every_baseline_at_the_widest_layer():
    assert M._hyperinf_best_at_width([_hyperinf()] * 3)[1] is True
    # below TracIn at width 512 (0.15 vs 0.2): not the highest
    assert M._hyperinf_best_at_width([_hyperinf(rank1={"hyperinf": (1.0, 0.15)})] * 3)[1] is False
    # TracIn counts as a baseline too
    assert M._hyperinf_best_at_width([_hyperinf(rank1={"hyperinf": (1.0, 0.7), "tracin": (0.9, 0.9)})] * 3)[1] is False
    # the highest at a narrow width does not count
    assert M._hyperinf_best_at_width([_hyperinf(rank1={"hyperinf": (1.0, 0.25)})] * 3)[1] is False


def test_hyperinf_asserted_claims_use_the_common_rank1_target_not_hyperinf_own_gfim():
    """bm16 finding 2: at rank 4 every method was scored against the exact GFIM solve, the matrix HyperINF inverts, so
    HyperINF scored 1.000 by construction. The asserted claims now read rank 1 (GFIM = FIM): a HyperINF that is exact
    on its own GFIM at rank 4 but not best on the common target does not hold, and the report names what it measures.
    """
    runs = [_hyperinf(rank1={"hyperinf": (1.0, 0.25)})] * 3  # GFIM at rank 4 still 0.99 against 0.72 at most
    text, ok = M._hyperinf_best_at_width(runs)
    assert ok is False and text.startswith("rank 1, width 512, Spearman with the exact influence (GFIM = FIM): ")
    # the baselines' drop is read on the common target too: flat at rank 1, falling against the GFIM at rank 4
    flat = [_hyperinf(rank1={"datainf": (0.3, 0.3), "lissa": (0.4, 0.4)})] * 3
    assert M._baselines_degrade(flat)[1] is False
    assert M._baselines_degrade(flat)[0].startswith("rank 1, drop from width 64 to 512: datainf 0.000")
    # a drop of 0.05 or less is not a fall
    assert M._baselines_degrade([_hyperinf(rank1={"datainf": (0.3, 0.26)})] * 3)[1] is False


def test_hyperinf_rank4_reports_both_references_and_is_not_asserted():
    claims = REPRODUCTIONS["hyperinf"].claims
    assert [c.asserted for c in claims] == [True, True, False, False]
    # the measured pattern (bm16 audit, seeds 0-2, width 1024): LiSSA, not HyperINF, is closest to the exact FIM
    measured = _hyperinf(fim={"hyperinf": (0.631, 0.570, 0.431), "datainf": (0.444, 0.321, 0.434),
                              "lissa": (0.531, 0.397, 0.507), "tracin": (0.545, 0.543, 0.348)},
                         hyperinf=(1.0, 1.0, 1.0), datainf=(0.687, 0.376, 0.453), lissa=(0.719, 0.396, 0.406),
                         tracin=(0.737, 0.509, 0.727))  # fmt: skip
    text, ok = M._hyperinf_best_on_fim_rank4([measured] * 3)
    assert ok is False
    assert "with the exact FIM influence (DataInf's and LiSSA's target): hyperinf 0.431" in text
    assert "with the exact GFIM influence (HyperINF's target): hyperinf 1.000" in text
    text, ok = M._baselines_degrade_own_target([measured] * 3)
    assert ok is False and "datainf 0.010" in text and "lissa 0.024" in text
    assert M._hyperinf_best_on_fim_rank4([_hyperinf()] * 3)[1] is True
    assert M._baselines_degrade_own_target([_hyperinf()] * 3)[1] is True


def test_hyperinf_report_title_and_setting_say_what_is_measured():
    rep = REPRODUCTIONS["hyperinf"]
    assert "rank 1" in rep.title and "per-layer Fisher" in rep.title
    assert "Rank 1 (widths 64 and 512)" in rep.setting and "against both exact solves" in rep.setting
    assert "Rank 1 (widths 64 and 256)" in rep.setting_for(True)


def test_baselines_degrade_needs_both_to_fall_from_narrow_to_wide():
    assert M._baselines_degrade([_hyperinf()] * 3)[1] is True
    assert M._baselines_degrade([_hyperinf(rank1={"lissa": (0.3, 0.5)})] * 3)[1] is False
    assert M._baselines_degrade([_hyperinf(rank1={"lissa": (0.3, 0.5), "datainf": (0.3, 0.5)})] * 3)[1] is False


# ------------------------------------------------------------------------------------------ layer_parallel
def test_layer_pairing_claims():
    assert M._lp_more_pairs_worse([_lp()] * 3)[1] is True
    # 2 pairs better than 1: perplexity does not rise with the number of pairs
    assert M._lp_more_pairs_worse([_lp(best=(16.0, 15.0, 50.0))] * 3)[1] is False
    assert M._lp_more_pairs_worse([_lp(source=15.5, best=(15.0, 17.0, 50.0))] * 3)[1] is False
    # the two last positions are starts 3 and 4 of 6 layers (15, 16); start 2 (25) is not one of them
    assert M._lp_late_pairs_cheaper([_lp()] * 3)[1] is True
    # late pairs (mean 20) above the early pairs' mean (19) on every seed
    assert M._lp_late_pairs_cheaper([_lp(single=(20.0, 18.0, 25.0, 20.0, 20.0))] * 3)[1] is False


def test_layer_pairing_late_claim_is_judged_per_seed_against_the_early_pairs_mean():
    """sd48: the claim asserted mean(late) < mean(1,2) < mean(0,1) over seeds. The order of the two early pairs is
    not the claim and is not robust (fresh seed 7: (1,2) 25.29, (0,1) 19.06), nor is the late pairs below (1,2) on
    every seed (seed 1: 15.62 against 16.69). Asserted now: on every seed, the late pairs' mean below the early pairs'
    mean; one seed where it is not fails the claim even when the seed means would pass."""
    seed7 = _lp(single=(19.06, 25.29, 15.78, 15.41, 15.55))  # (1,2) above (0,1): held on the old rule only by chance
    seed1 = _lp(single=(23.91, 15.62, 16.75, 16.44, 16.94))  # (1,2) below the late pairs' 16.69
    text, ok = M._lp_late_pairs_cheaper([seed7, seed1, _lp()])
    assert ok is True and "early minus late per seed" in text
    # one seed with the late pairs above its early mean (16 against 15.5) fails, though the means over seeds pass
    bad = _lp(single=(15.0, 16.0, 15.0, 16.0, 16.0))
    assert M._lp_late_pairs_cheaper([_lp(), _lp(), bad])[1] is False
    nan = _lp(single=(46.0, 18.0, 25.0, float("nan"), 15.0))
    assert M._lp_late_pairs_cheaper([_lp(), _lp(), nan])[1] is False


# ------------------------------------------------------------------------------------------ warmup, cubic Newton
def test_warmup_claim_reads_adamw_and_lion_in_their_roles():
    # AdamW 0.30/0.35/0.40 (mean 0.35 - sd 0.05 > 0); LionAR ~0 (|mean| 0.003 <= 0.175)
    runs = [_warmup(0.3, 0.01), _warmup(0.35, -0.02), _warmup(0.4, 0.0)]
    assert M._adamw_needs_warmup(runs)[1] is True
    swapped = [_warmup(0.01, 0.3), _warmup(-0.02, 0.35), _warmup(0.0, 0.4)]
    assert M._adamw_needs_warmup(swapped)[1] is False


def test_momentum_must_lower_the_plateau_by_a_sign_test_and_the_stated_margin():
    win, loss = {"cn": 0.5, "cn_momentum": 0.2, "adam": 0.1}, {"cn": 0.5, "cn_momentum": 0.6, "adam": 0.1}
    # one-sided sign test by hand: P(>= 9 of 10) = (10 + 1) / 1024, P(>= 8 of 10) = (45 + 10 + 1) / 1024
    assert M.sign_test_p(9, 10) == pytest.approx(11 / 1024) and M.sign_test_p(8, 10) == pytest.approx(56 / 1024)
    assert M.sign_test_p(5, 5) == pytest.approx(1 / 32) and M.sign_test_p(0, 4) == 1.0
    assert M._momentum_lowers_plateau([win] * 9 + [loss])[1] is True  # p 0.011; mean 0.24 < 0.7 * 0.5
    assert M._momentum_lowers_plateau([win] * 8 + [loss] * 2)[1] is False  # p 0.055: could be chance
    assert M._momentum_lowers_plateau([win] * 5)[1] is True  # p 1/32
    assert M._momentum_lowers_plateau([win] * 4 + [loss])[1] is False  # p 6/32
    # lower on every seed but only to 0.9x (docs/optim.md: the plateau is compared at 0.7x)
    assert M._momentum_lowers_plateau([{"cn": 0.5, "cn_momentum": 0.45, "adam": 0.1}] * 10)[1] is False
    assert M.REPRODUCTIONS["cubic_newton"].default_seeds == 10  # 5 seeds hid a losing seed (seeds 5-9: 4/5)


@pytest.mark.parametrize("ratio, expected", [(0.75, False), (0.71, False), (0.7, False), (0.69, True), (0.65, True)])
def test_momentum_plateau_margin_is_0_7x_at_its_edge(ratio, expected):
    """mu19 (r3): lower on 5/5 seeds (p = 1/32) decides on the margin alone: the claim states < 0.7x the plateau
    without momentum, so 0.75x and 0.71x (and 0.7x itself) fail and 0.69x passes."""
    runs = [{"cn": 1.0, "cn_momentum": ratio, "adam": 0.1}] * 5
    assert M._momentum_lowers_plateau(runs)[1] is expected


# ------------------------------------------------------------------------------------------ neuralgrok
def test_neuralgrok_claims_with_the_stated_ratios(merged_is_first_run):
    assert M._ng_faster_than_baseline([_ng()])[1] is True
    # faster on average (400 vs 900) but 2 of 3 seeds reached 95%: not "on every seed"
    assert M._ng_faster_than_baseline([_ng(neuralgrok={"steps_to_target_mean": 400.0, "reached": 2})])[1] is False
    # 800 vs 900 steps is 0.89x: not "< 0.8x the baseline's steps"
    assert M._ng_faster_than_baseline([_ng(neuralgrok={"steps_to_target_mean": 800.0})])[1] is False
    assert M._ng_normalisation_helps([_ng(normalize={"steps_to_target_mean": 750.0})])[1] is False
    # next_step: cheap steps (1.2x) but slower to 95% in CPU time (110 vs 100 s)
    assert M._ng_next_step_cost([_ng(neuralgrok_next_step={"cpu_seconds_to_target_mean": 110.0})])[1] is False
    # 10x weight decay run that reached 95% on a seed has generalised
    assert M._ng_strong_wd([_ng(none_strong_wd={"reached": 1})])[1] is False
    # NeuralGrok 120 s vs baseline 100 s to 95%: not less training time
    assert M._ng_less_training_time([_ng(neuralgrok={"cpu_seconds_to_target_mean": 120.0})])[1] is False


# ------------------------------------------------------------------------------------------ federated
def test_exposure_gain_and_extraction_of_a_history():
    history = [{"exposure_10x": 2.0, "exact_10x": 0.5, "approx_10x": 0.2, "bleu_10x": 0.2},
               {"exposure_10x": 2.5, "exact_10x": 0.0, "approx_10x": 0.1, "bleu_10x": 0.1},
               {"exposure_10x": 3.0, "exact_10x": 0.1, "approx_10x": 0.1, "bleu_10x": 0.1}]  # fmt: skip
    assert M._exposure_gain(history) == pytest.approx(1.0)  # last round minus the base model (round 0)
    assert M._extraction(history) == pytest.approx(0.3)  # max over the training rounds; round 0 is the base model


def test_federated_claims():
    # full > LoRA > Goldfish on seeds 0 and 1 only (seed 2: Goldfish 1.2 > LoRA 1.0)
    runs = [_fed(gold=0.8), _fed(gold=0.8), _fed(gold=1.2)]
    assert M._lora_memorizes_less(runs)[1] is False
    # LoRA's gain 0.04 <= 0.05: the comparison with Goldfish is empty (docs/federated.md)
    assert M._lora_memorizes_less([_fed(lora=0.04, gold=0.0)] * 3)[1] is False
    # DP raises LoRA's exposure a little: it does not lower it
    assert M._dp_lowers([_fed(lora=1.0, dp=1.01)] * 3)[1] is False
    # centralized, 1x canaries: full 2.0 is only 2x LoRA's 1.0
    assert M._centralized_too([_fed(c_full1=2.0, c_lora1=1.0)] * 3)[1] is False
    assert M._centralized_too([_fed()] * 3)[1] is True


# ------------------------------------------------------------------------------------------ table and verdict
def test_mean_spread_is_mean_sample_sd_then_min_max():
    values = [1.0, 2.0, 6.0]
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in values) / (len(values) - 1))  # sample sd, n - 1
    assert mean_spread(values) == f"3.000 ± {sd:.3f} (1.000..6.000)"
    assert mean_spread([2.5]) == "2.500 (one seed: no spread)"  # a sample sd needs two values


def test_mean_spread_of_a_nan_does_not_crash_the_report():
    """A NaN in one seed used to end `reproduce()` with "'float' object has no attribute 'numerator'" (from
    statistics.stdev) after every run had finished, writing no reproduction.json."""
    assert "nan" in mean_spread([1.0, NAN, 2.0])


def _toy(monkeypatch, name, claims, run=None, seen=None):
    def default_run(seed, fast, workdir):
        if seen is not None:
            seen.append((seed, fast, workdir))
        return {"seed": seed, "gap": 1.0}

    spec = Reproduction(name, "toy", run or default_run, claims, default_seeds=3)
    monkeypatch.setitem(REPRODUCTIONS, name, spec)
    return spec


def test_report_holds_only_when_every_asserted_claim_holds(monkeypatch):
    ok, bad = Claim("ok", "-", lambda runs: ("-", True)), Claim("bad", "-", lambda runs: ("-", False))
    _toy(monkeypatch, "toy_all", [ok, bad])
    assert not reproduce("toy_all", seeds=1).holds
    _toy(monkeypatch, "toy_all", [ok, Claim("none", "-", lambda runs: ("-", None))])
    report = reproduce("toy_all", seeds=1)
    assert [r.verdict for r in report.rows] == ["holds", "does not hold"] and not report.holds


def test_written_json_and_markdown_are_the_returned_report(monkeypatch, tmp_path):
    claim = Claim("mean gap", "-", lambda runs: (mean_spread([r["seed"] for r in runs]), True))
    _toy(monkeypatch, "toy_out", [claim])
    report = reproduce("toy_out", seeds=[4, 2, 7], output_dir=str(tmp_path))
    saved = json.loads((tmp_path / "reproduction.json").read_text())
    assert saved["per_seed"] == report.per_seed == [{"seed": s, "gap": 1.0} for s in (4, 2, 7)]
    assert saved["seeds"] == [4, 2, 7] and saved["rows"][0]["verdict"] == "holds"
    assert saved["rows"][0]["ours"] == report.rows[0].ours == mean_spread([4, 2, 7])
    assert (tmp_path / "reproduction.md").read_text() == report.to_markdown()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"] == []


class _ThreadPool:
    """Stands in for ProcessPoolExecutor: threads (no spawn), and records what the harness asked for."""

    created: list = []

    def __init__(self, max_workers=None, mp_context=None):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=max_workers)
        _ThreadPool.created.append(max_workers)

    def submit(self, *args, **kwargs):
        return self._pool.submit(*args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True)

    def shutdown(self, wait=True, cancel_futures=False):
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@pytest.fixture
def thread_pool(monkeypatch):
    import concurrent.futures

    _ThreadPool.created = []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _ThreadPool)
    return _ThreadPool


def test_jobs_pass_seed_fast_and_folder_and_return_in_seed_order(monkeypatch, tmp_path, thread_pool):
    seen = []

    def run(seed, fast, workdir):
        time.sleep(0.02 * (10 - seed))  # the first seeds finish last
        seen.append((seed, fast, workdir))
        return {"seed": seed, "fast": fast, "workdir": workdir}

    _toy(monkeypatch, "toy_par", [Claim("c", "-", lambda runs: (",".join(str(r["seed"]) for r in runs), True))], run)
    report = reproduce("toy_par", seeds=[3, 1, 2, 0], fast=True, output_dir=str(tmp_path), jobs=3)
    assert thread_pool.created == [3] and len(seen) == 4
    assert [r["seed"] for r in report.per_seed] == [3, 1, 2, 0] and report.rows[0].ours == "3,1,2,0"
    assert all(r["fast"] is True for r in report.per_seed)
    assert [r["workdir"] for r in report.per_seed] == [str(tmp_path / f"seed{s}") for s in (3, 1, 2, 0)]
    reproduce("toy_par", seeds=2, jobs=8)
    assert thread_pool.created == [3, 2]  # never more workers than seeds


# ------------------------------------------------------------------------------------------ CLI
def test_cli_passes_seeds_and_jobs_and_exits_with_the_verdict(monkeypatch, capsys, thread_pool):
    seen = []
    spec = _toy(monkeypatch, "toy_cli", [Claim("c", "-", lambda runs: ("-", len(runs) == 2))], seen=seen)
    assert main(["reproduce", "toy_cli", "--seeds", "2", "--jobs", "2", "--fast"]) == 0
    assert sorted(s for s, _, _ in seen) == [0, 1] and all(f for _, f, _ in seen) and thread_pool.created == [2]
    assert "| c | - | - | holds |" in capsys.readouterr().out
    seen.clear()
    spec.claims = [Claim("c", "-", lambda runs: ("-", False))]
    assert main(["reproduce", "toy_cli", "--seeds", "1"]) == 1  # a claim that does not hold: exit code 1
    assert [s for s, _, _ in seen] == [0]


@pytest.mark.parametrize("argv,flag", [(["--seeds", "0"], "--seeds"), (["--seeds", "-2"], "--seeds"),
                                       (["--jobs", "0"], "--jobs"), (["--jobs", "-1"], "--jobs")])  # fmt: skip
def test_cli_refuses_bad_seeds_and_jobs_as_usage_errors_before_any_run(monkeypatch, capsys, argv, flag):
    seen = []
    _toy(monkeypatch, "toy_bad_cli", [Claim("c", "-", lambda runs: ("-", True))], seen=seen)
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "toy_bad_cli", *argv])
    assert exc.value.code == 2 and flag in capsys.readouterr().err and seen == []


def test_cli_refuses_an_unknown_method_by_name_before_any_run(monkeypatch, capsys):
    seen = []
    _toy(monkeypatch, "toy_known", [Claim("c", "-", lambda runs: ("-", True))], seen=seen)
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "toy_unknown", "--seeds", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "toy_unknown" in err and "toy_known" in err and seen == []


def test_rejudge_reads_the_saved_seeds_again(monkeypatch, tmp_path):
    spec = _toy(monkeypatch, "toy_rj", [Claim("c", "-", lambda runs: (str(len(runs)), True))])
    reproduce("toy_rj", seeds=[5, 6], output_dir=str(tmp_path))
    spec.claims = [Claim("c", "-", lambda runs: (str(sum(r["seed"] for r in runs)), False))]
    again = rejudge(str(tmp_path))
    assert again.rows[0].ours == "11" and again.rows[0].verdict == "does not hold" and not again.holds
    assert statistics.fmean(r["seed"] for r in again.per_seed) == 5.5


@pytest.mark.parametrize("method,index", _cases())
def test_a_claim_judges_the_same_after_the_json_round_trip_of_rejudge(method, index, merged_is_first_run):
    """`rejudge` reads the per-seed results back from reproduction.json, where every key is a string."""
    claim = REPRODUCTIONS[method].claims[index]
    runs = [copy.deepcopy(r) for r in HOLDING[method]]
    assert claim.judge(json.loads(json.dumps(runs))) == claim.judge(runs)


def test_jobs_a_failed_seed_cancels_the_queued_seeds(monkeypatch, tmp_path, thread_pool):
    """ev15: with --jobs, a seed that failed at once let every queued seed run in full before the failure came out
    (the pool's exit waited for all of them); now the queued seeds are cancelled and the failure raises."""
    finished = []

    def run(seed, fast, workdir):
        if seed == 0:
            raise RuntimeError("seed 0 failed at once")
        time.sleep(0.3)
        finished.append(seed)
        return {"seed": seed, "gap": 1.0}

    _toy(monkeypatch, "toy_fail", [Claim("c", "-", lambda runs: ("x", True))], run)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="seed 0 failed at once"):
        reproduce("toy_fail", seeds=8, jobs=2, output_dir=str(tmp_path))
    assert len(finished) <= 2, finished  # only the seeds already running when seed 0 failed
    assert time.perf_counter() - start < 1.5
    assert not (tmp_path / "reproduction.json").exists()


@pytest.mark.parametrize("fast", ["false", "no", "0", 1, None])
def test_fast_must_be_a_bool(monkeypatch, tmp_path, fast):
    """ev15: reproduce(fast="false") ran the smoke-check budget (a truthy string) and reported it as a --fast run."""
    seen = []
    _toy(monkeypatch, "toy_fast", [Claim("c", "-", lambda runs: ("x", True))], seen=seen)
    with pytest.raises(TypeError, match="fast must be True or False"):
        reproduce("toy_fast", seeds=1, fast=fast, output_dir=str(tmp_path))
    assert seen == []


@pytest.mark.parametrize(
    "argv", [["--seeds", "3"], ["--seeds", "0"], ["--jobs", "-1"], ["--fast"], ["--output_dir", "x", "--seeds", "2"]]
)
def test_cli_reproduce_run_options_without_a_method_are_a_usage_error(capsys, argv):
    """ev15: `hf-ext reproduce --seeds 3 --fast` (method forgotten) printed the method list and exited 0."""
    from hf_ext.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["reproduce", *argv])
    assert exc.value.code == 2
    assert "without a method" in capsys.readouterr().err
    assert main(["reproduce", "--list"]) == 0 and main(["reproduce"]) == 0  # the list itself still works


@pytest.mark.parametrize("fmt", ["{:+.2f}", "{:.2f}"])
def test_mean_spread_shows_the_spread_without_a_sign_in_a_signed_format(fmt):
    """mu19 (r4): a spread has no sign; a signed format ("{:+.2f}", DCG and layer-pairing judges) signs the mean and
    the range only."""
    text = mean_spread([1.0, 2.0], fmt)
    sign = "+" if "+" in fmt else ""
    assert text == f"{sign}1.50 ± 0.71 ({sign}1.00..{sign}2.00)"
    assert mean_spread([-1.0, -2.0], "{:+.2f}") == "-1.50 ± 0.71 (-2.00..-1.00)"


def test_layer_pairing_late_claim_names_the_means_it_compares():
    """rv49: the claim read "the two last positions' mean below (0,1) and (1,2)'s", which reads as below each early
    pair; the judge compares the late mean with the early pairs' mean (the report names it, and docs/reproductions.md
    prints the claim)."""
    name = REPRODUCTIONS["layer_parallel"].claims[1].name
    assert "the mean over the two last positions below the mean over (0,1) and (1,2)" in name
