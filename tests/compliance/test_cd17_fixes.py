"""Pass-17 audit (cd17) of the data compliance layer: `compute_dcg` reads the direction of a perplexity from either
side's metric key, the recipe records the snapshot's fetch dates as a range, `annotate_compliance` does not leave a
stale agents column (and `compute_retention_stats` refuses one that contradicts the boolean), and the coarse
(domain-level) mode of the paper."""

import pytest


@pytest.mark.parametrize(
    "full, comp",
    [
        (
            {"results": {"wikitext": {"word_perplexity,none": 20.0}}},
            {"results": {"wikitext": {"word_perplexity,none": 25.0}}},
        ),
        ({"results": {"wikitext": {"word_perplexity,none": 20.0}}}, {"wikitext": 25.0}),
        ({"wikitext": 20.0}, {"results": {"wikitext": {"word_perplexity,none": 25.0}}}),
        ({"wikitext": {"perplexity": 20.0}}, {"wikitext": 25.0}),
        ({"wikitext": 20.0}, {"wikitext": {"perplexity": 25.0}}),
    ],
    ids=["both-lm-eval", "compliant-bare", "full-bare", "nested-full", "nested-compliant"],
)
def test_compute_dcg_perplexity_sign_does_not_depend_on_which_side_is_bare(full, comp):
    """Perplexity 20 -> 25: the compliant model is worse, so the gap is +25% whichever side names the metric (the
    full model as a bare score used to give -25%: only the non-compliant side was read)."""
    from hf_ext.compliance import compute_dcg

    assert compute_dcg(full, comp).rows[0]["gap"] == pytest.approx(25.0)
    assert compute_dcg(full, comp, relative=False).rows[0]["gap"] == pytest.approx(5.0)


def test_compute_dcg_bare_scores_on_both_sides_stay_higher_is_better_unless_named():
    from hf_ext.compliance import compute_dcg

    assert compute_dcg({"t": 20.0}, {"t": 25.0}).rows[0]["gap"] == pytest.approx(-25.0)
    assert compute_dcg({"t": 20.0}, {"t": 25.0}, lower_is_better=["t"]).rows[0]["gap"] == pytest.approx(25.0)
    # an explicit lower_is_better=() is used as is, also against a named perplexity on one side
    full = {"wikitext": 20.0}
    comp = {"results": {"wikitext": {"word_perplexity,none": 25.0}}}
    assert compute_dcg(full, comp, lower_is_better=()).rows[0]["gap"] == pytest.approx(-25.0)
