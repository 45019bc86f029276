"""pr47: numpy integers (a shot count or item limit read from a numpy array) are ints for `num_fewshot`, `limit`,
`batch_size` and `max_length`, as they already were for `seed`: they were refused as "must be a non-negative int, got
np.int64(2)". lm-eval gets them as Python numbers."""

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from hf_ext.evaluation import evaluate_model, evaluate_models, evaluate_with_prefix  # noqa: E402


class NoLM(LM):
    def loglikelihood(self, requests, disable_tqdm=False):  # pragma: no cover
        raise AssertionError("scored")

    loglikelihood_rolling = generate_until = loglikelihood


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: seen.append(kw) or {"results": {}})
    return seen


@pytest.mark.parametrize("run", [evaluate_model, evaluate_with_prefix])
def test_numpy_shots_and_limit_reach_lm_eval_as_python_numbers(run, calls):
    run(NoLM(), tasks="hf_ext_cloze", num_fewshot=np.int64(2), limit=np.int32(3), batch_size=np.int64(4),
        max_length=np.int64(64))  # fmt: skip
    (kw,) = calls
    assert type(kw["num_fewshot"]) is int and kw["num_fewshot"] == 2
    assert type(kw["limit"]) is int and kw["limit"] == 3


def test_numpy_float_share_reaches_lm_eval_as_float(calls):
    evaluate_model(NoLM(), tasks="hf_ext_cloze", limit=np.float32(0.5))
    (kw,) = calls
    assert type(kw["limit"]) is float and kw["limit"] == 0.5


def test_numpy_shot_counts_in_evaluate_models(calls):
    evaluate_models({"m": NoLM()}, tasks="hf_ext_cloze", num_fewshot=[np.int64(0), np.int64(1)])
    assert [kw["num_fewshot"] for kw in calls] == [0, 1]
    assert all(type(kw["num_fewshot"]) is int for kw in calls)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_fewshot": np.int64(-1)}, "num_fewshot"),
        ({"num_fewshot": np.float64(2.0)}, "num_fewshot"),
        ({"num_fewshot": np.bool_(True)}, "num_fewshot"),
        ({"limit": np.int64(0)}, "limit"),
        ({"limit": np.float64("nan")}, "limit"),
        ({"batch_size": np.int64(0)}, "batch_size"),
        ({"max_length": np.int64(0)}, "max_length"),
    ],
)
def test_bad_numpy_values_are_still_refused_by_name(kwargs, match, calls):
    with pytest.raises(ValueError, match=match):
        evaluate_model(NoLM(), tasks="hf_ext_cloze", **kwargs)
    assert calls == []
