"""Mutation-kill tests (audit pass 41, mu51) for the reproduction judges in hf_ext/reproduce/methods.py: the boundary
values their claims state."""

from hf_ext.reproduce import methods as M


def _metadata(steps, max_steps=300):
    return {"max_steps": max_steps, "steps_to_match": steps, "steps_to_match_without_context": steps,
            "final": {"baseline": 3.0, "url_model_with_context": 2.9}, "share_scale_1": 0.3, "share_guided": 0.35}  # fmt: skip


def test_steps_fraction_of_exactly_0_8_holds():
    # 240 of 300 steps is a fraction of exactly 0.8 (the judge's bound, inclusive); 241 is above it
    assert 240 / 300 == 0.8
    assert M._steps_fraction([_metadata(240.0)])[1] is True
    assert M._steps_fraction([_metadata(241.0)])[1] is False


def _compliance(datatypes_gap):
    scratch = {"language": 8.0, "concurrency": 0.5, "datatypes": datatypes_gap, "other": 3.0}
    continual = {"language": 1.0, "concurrency": 0.2, "datatypes": 0.1, "other": 1.0}
    removed = {"language": 100.0, "concurrency": 0.0, "datatypes": 10.0, "other": 50.0}
    return {"gaps": {"scratch": scratch, "continual": continual}, "removed_pct": removed}


def test_a_domain_with_exactly_10_percent_removed_counts_as_little_removed():
    # "domains with <= 10% removed": datatypes (10.0% removed) is one of them, so its large gap (5 points) makes the
    # little-removed mean 2.75 >= 2: no "no loss" claim; left out, the mean would be concurrency's 0.5 alone
    text, ok = M._dcg_domain_vs_general([_compliance(5.0)] * 3)
    assert "(concurrency, datatypes)" in text
    assert ok is False
    assert M._dcg_domain_vs_general([_compliance(-0.5)] * 3)[1] is True


def _lp(source, best):
    return {"source": source, "best": {i + 1: b for i, b in enumerate(best)}, "mean": {i + 1: b for i, b in enumerate(best)},
            "single": dict(enumerate((46.0, 18.0, 25.0, 16.0, 15.0)))}  # fmt: skip


def test_more_pairs_must_be_strictly_worse():
    # "perplexity rises with the number of paired layers": a count that leaves the best perplexity where it was is no rise
    assert M._lp_more_pairs_worse([_lp(14.0, (15.0, 17.0, 50.0))] * 3)[1] is True
    assert M._lp_more_pairs_worse([_lp(14.0, (15.0, 15.0, 50.0))] * 3)[1] is False
    assert M._lp_more_pairs_worse([_lp(15.0, (15.0, 17.0, 50.0))] * 3)[1] is False


def test_hyperinf_must_beat_every_method_by_more_than_0_05():
    # `_best_of`: HyperINF's seed mean above every other method's by more than 0.05, not just above it
    assert M._best_of({"hyperinf": [0.9, 0.9], "datainf": [0.8, 0.8], "lissa": [0.7, 0.7]}) is True
    assert M._best_of({"hyperinf": [0.9, 0.9], "datainf": [0.87, 0.87], "lissa": [0.7, 0.7]}) is False
    assert M._best_of({"hyperinf": [0.9, 0.9], "datainf": [0.8, 0.8], "lissa": [float("nan"), 0.7]}) is False
