"""`batch_size` and `max_length` of the lm-eval entry points, checked before the model is wrapped.

`evaluate_model` refused `batch_size` 0, -3 and True by name, but `evaluate_with_prefix` ran with all three; a
`max_length` of -5, 0.5 or True reached lm-eval in both and failed there with a bare `AssertionError('')`."""

import pytest

pytest.importorskip("lm_eval")

import hf_ext.evaluation.harness as harness  # noqa: E402
import hf_ext.evaluation.prompting as prompting  # noqa: E402


@pytest.fixture
def no_wrapping(monkeypatch):
    def wrap(*args, **kwargs):
        raise AssertionError("the model was wrapped before batch_size / max_length were checked")

    monkeypatch.setattr(harness, "_as_lm", wrap)
    monkeypatch.setattr(prompting, "_as_lm", wrap)


ENTRY_POINTS = {"evaluate_model": harness.evaluate_model, "evaluate_with_prefix": prompting.evaluate_with_prefix}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "big"])
def test_a_bad_batch_size_is_refused_by_both_entry_points(no_wrapping, entry, bad):
    with pytest.raises(ValueError, match=r"batch_size must be a positive int \(or lm-eval's 'auto'\)"):
        ENTRY_POINTS[entry](object(), None, tasks=["hf_ext_cloze"], batch_size=bad)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad", [-5, 0, 0.5, True, "512"])
def test_a_bad_max_length_is_refused_by_both_entry_points(no_wrapping, entry, bad):
    with pytest.raises(ValueError, match=f"max_length must be a positive int .* got {bad!r}"):
        ENTRY_POINTS[entry](object(), None, tasks=["hf_ext_cloze"], max_length=bad)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_good_values_reach_the_wrapping(no_wrapping, entry):
    for kwargs in ({"batch_size": 4, "max_length": 128}, {"batch_size": "auto", "max_length": None}):
        with pytest.raises(AssertionError, match="the model was wrapped"):
            ENTRY_POINTS[entry](object(), None, tasks=["hf_ext_cloze"], **kwargs)
