"""The paper's claim, measured directly: agreement with the exact influence as the LoRA layer widens (issue 20.11)."""

import numpy as np
import pytest

from hf_ext.hyperinf.reproduce import accuracy_sweep, markdown_table, summarize


def test_accuracy_sweep_small():
    """One seed at width 32: HyperINF equals the exact GFIM solve, and at rank 1 the GFIM is the FIM, so it also
    equals the exact FIM solve that DataInf and LiSSA approximate."""
    records = accuracy_sweep(
        seeds=(0,), widths=(32,), width_rank=2, ranks=(1,), rank_width=32, methods=("hyperinf", "datainf", "tracin"),
        verbose=False,
    )  # fmt: skip
    got = {(r.rank, r.method): r for r in records}
    assert set(got) == {(rank, m) for rank in (1, 2) for m in ("hyperinf", "datainf", "tracin")}
    assert got[(2, "hyperinf")].spearman_gfim > 0.999
    assert got[(1, "hyperinf")].spearman_fim > 0.999
    assert all(r.cpu_seconds >= 0 and -1 <= r.spearman_gfim <= 1 for r in records)
    table = markdown_table(summarize(records))
    assert table.count("\n") == 1 + 6 and "| 32 | 1 | hyperinf | 1.000" in table
    with pytest.raises(ValueError, match="methods"):
        accuracy_sweep(seeds=(0,), widths=(32,), methods=("kfac",))


@pytest.mark.slow
def test_hyperinf_tracks_exact_influence_best_as_width_grows():
    """Three seeds: the sweep of `scripts/bench_hyperinf.py` (widths 64..1024 at rank 4, ranks 1/4/16 at width 256; the
    table of docs/hyperinf.md) and widths 64, 512 and 1024 at rank 1.

    Every method is judged against its own target only. At rank > 1 the GFIM HyperINF inverts and the per-layer Fisher
    (FIM) DataInf and LiSSA approximate are different matrices, and against their own target the baselines barely
    degrade with width (docs/reproductions.md, hyperinf entry): at rank 4 only HyperINF's agreement with the exact GFIM
    solve is asserted, >= 0.999 at widths 512 and 1024 on every seed (its Schulz iteration converged). The comparison
    with the baselines is asserted at rank 1, where the GFIM is the FIM, one exact target for every method: per seed,
    at widths 256, 512 and 1024 HyperINF's Spearman correlation with it is >= 0.999 and exceeds DataInf's, LiSSA's and
    TracIn's (the no-curvature control) by at least 0.1; on the seed means, DataInf's and LiSSA's falls by at least
    0.1 from width 64 to width 1024 (the baselines' degradation the paper reports)."""
    seeds = (0, 1, 2)
    records = accuracy_sweep(seeds=seeds)
    print("\n" + markdown_table(summarize(records)))
    rank_one = accuracy_sweep(
        seeds=seeds, widths=(64, 512, 1024), width_rank=1, ranks=(), methods=("hyperinf", "datainf", "lissa", "tracin")
    )
    print("\n" + markdown_table(summarize(rank_one)))
    by = {(r.seed, r.width, r.rank, r.method): r for r in records + rank_one}
    for seed in seeds:
        for width in (512, 1024):
            assert by[(seed, width, 4, "hyperinf")].spearman_gfim >= 0.999, (seed, width)
        for width in (256, 512, 1024):
            assert by[(seed, width, 1, "hyperinf")].spearman_gfim >= 0.999, (seed, width)
            hyper = by[(seed, width, 1, "hyperinf")].spearman_fim  # GFIM = FIM: DataInf's and LiSSA's own target
            others = {m: by[(seed, width, 1, m)].spearman_fim for m in ("datainf", "lissa", "tracin")}
            assert hyper >= 0.999, (seed, width, hyper)
            assert hyper >= max(others.values()) + 0.1, (seed, width, hyper, others)
    for method in ("datainf", "lissa"):
        narrow = np.mean([by[(s, 64, 1, method)].spearman_fim for s in seeds])
        wide = np.mean([by[(s, 1024, 1, method)].spearman_fim for s in seeds])
        assert narrow >= wide + 0.1, (method, narrow, wide)
