"""`accuracy_sweep(max_fim_dim=...)` skips only the full-FIM column; the exact GFIM target is still solved."""

from hf_ext.hyperinf.reproduce import accuracy_sweep


def test_a_width_above_max_fim_dim_skips_only_the_fim_column():
    common = dict(seeds=(0,), widths=(16,), width_rank=1, ranks=(), methods=("tracin",), verbose=False)
    capped = accuracy_sweep(max_fim_dim=8, **common)  # rank * width = 16 > 8: no FIM solve
    full = accuracy_sweep(max_fim_dim=16, **common)
    assert [r.method for r in capped] == ["tracin"]
    assert capped[0].spearman_fim is None
    assert full[0].spearman_fim is not None
    # the GFIM correlation does not depend on whether the FIM was solved
    assert capped[0].spearman_gfim == full[0].spearman_gfim
    assert -1.0 <= capped[0].spearman_gfim <= 1.0


def test_the_size_refusal_suggests_gfim_only_when_it_is_not_already_used():
    import pytest

    from hf_ext.hyperinf.influence import InfluenceConfig, InfluenceEngine

    shapes = {"a": (2, 8)}
    with pytest.raises(ValueError, match="exact_curvature='gfim'") as fim:
        InfluenceEngine(InfluenceConfig(method="exact", exact_curvature="fim", max_exact_dim=4), shapes)
    assert "raise `max_exact_dim`" in str(fim.value)
    with pytest.raises(ValueError, match="max_exact_dim=4") as gfim:
        InfluenceEngine(InfluenceConfig(method="exact", exact_curvature="gfim", max_exact_dim=4), shapes)
    assert "or exact_curvature='gfim'" not in str(gfim.value)
