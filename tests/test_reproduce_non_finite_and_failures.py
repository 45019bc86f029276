"""Diverged seeds and failed runs in the reproductions and the recipes' summaries.

`statistics.stdev` raises an AttributeError on a NaN or inf: the warmup claim judge and the neuralgrok summary ended
the run there, with no report (every finished seed lost). `mean_spread`'s range skipped a NaN that was not first. A
crash of `hf-ext reproduce` exited 1, the code of "a claim does not hold". An `$HF_EXT_CACHE` below a file failed
with a bare NotADirectoryError; `evaluate_model(batch_size=0)` ran."""

from __future__ import annotations

import math

import pytest

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_the_warmup_claim_reads_not_shown_on_a_diverged_seed(bad):
    from hf_ext.recipes.warmup import warmup_claim_holds

    assert warmup_claim_holds([0.5, 0.6, 0.55], [0.01, -0.02, 0.0])  # the judge itself still works
    assert warmup_claim_holds([0.5, bad, 0.55], [0.01, -0.02, 0.0]) is False
    assert warmup_claim_holds([0.5, 0.6, 0.55], [0.01, bad, 0.0]) is False


def test_the_neuralgrok_summary_keeps_a_diverged_seed_as_nan():
    from hf_ext.recipes.neuralgrok import _mean_std

    mean, spread = _mean_std([1.0, NAN, 3.0])
    assert math.isnan(mean) and math.isnan(spread)
    assert _mean_std([1.0, INF])[0] == INF and math.isnan(_mean_std([1.0, INF])[1])
    assert _mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(math.sqrt(2.0)))


@pytest.mark.parametrize("values", [[1.0, NAN, 3.0], [NAN, 1.0, 3.0], [1.0, 3.0, NAN]])
def test_mean_spread_shows_a_nan_range_whatever_the_seed_order(values):
    from hf_ext.reproduce import mean_spread

    assert mean_spread(values) == "nan ± nan (nan..nan)"
    assert mean_spread([1.0, 2.0, 3.0]) == "2.000 ± 1.000 (1.000..3.000)"


def test_a_crashed_reproduction_exits_4_not_the_verdict_code_1(monkeypatch, capsys):
    import hf_ext.reproduce as rep
    from hf_ext.cli import main

    def crash(*args, **kwargs):
        raise RuntimeError("seed 1 failed")

    monkeypatch.setattr(rep, "reproduce", crash)
    assert main(["reproduce", "cubic_newton", "--fast", "--seeds", "1"]) == 4
    err = capsys.readouterr().err
    assert "RuntimeError: seed 1 failed" in err and "failed before a verdict (exit 4)" in err


@pytest.mark.parametrize("below", [False, True])
def test_an_hf_ext_cache_on_a_file_is_named(tmp_path, monkeypatch, below):
    from hf_ext.data.utils import cache_dir

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("HF_EXT_CACHE", str(blocker / "sub" if below else blocker))
    with pytest.raises(NotADirectoryError, match=r"\$HF_EXT_CACHE .* cannot be a folder: .*afile is a file"):
        cache_dir()
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path / "new" / "cache"))
    assert cache_dir() == tmp_path / "new" / "cache"  # a missing folder is fine (created when written)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "big"])
def test_evaluate_model_refuses_a_bad_batch_size(bad):
    from hf_ext.evaluation import evaluate_model

    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate_model(object(), None, tasks=["hf_ext_cloze"], batch_size=bad)
