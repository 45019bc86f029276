"""A bad `seed` or a non-iterable `tasks` is refused by name before anything is evaluated (ev33 F2): `seed="1"` and
`seed=1.5` failed inside lm-eval's numpy seeding ("Cannot cast scalar ...") and `tasks=3` with "'int' object is not
iterable"."""

import pytest

pytest.importorskip("lm_eval")

from hf_ext.evaluation import evaluate_model, evaluate_models, evaluate_with_prefix  # noqa: E402


class _Untouchable:
    """A model that must not be reached: the checks come first."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the arguments were checked")


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_bad_seed_is_refused_by_name(seed):
    for call in (evaluate_model, evaluate_with_prefix):
        with pytest.raises(ValueError, match="seed must be an int"):
            call(_Untouchable(), object(), tasks=["hf_ext_cloze"], seed=seed)
    with pytest.raises(ValueError, match="seed must be an int"):
        evaluate_models({"m": _Untouchable()}, tasks=["hf_ext_cloze"], seed=seed)


def test_non_iterable_tasks_is_refused_by_name():
    with pytest.raises(ValueError, match="tasks must be a non-empty list of task names, got 3"):
        evaluate_model(_Untouchable(), object(), tasks=3)
