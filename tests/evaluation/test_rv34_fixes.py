"""rv34: a numpy integer seed passes the seed check, so it reaches lm-eval as a Python int (lm-eval seeds Python's
`random` with it, which refuses numpy integers with a message that does not name `seed`)."""

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from hf_ext.evaluation import evaluate_model, evaluate_with_prefix  # noqa: E402


class NoLM(LM):
    def loglikelihood(self, requests, disable_tqdm=False):  # pragma: no cover
        raise AssertionError("scored")

    loglikelihood_rolling = generate_until = loglikelihood


@pytest.mark.parametrize("run", [evaluate_model, evaluate_with_prefix])
def test_numpy_seed_reaches_lm_eval_as_int(run, monkeypatch):
    calls = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw) or {"results": {}})
    run(NoLM(), tasks="hf_ext_cloze", seed=np.int64(7))
    (kw,) = calls
    for name in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed"):
        assert type(kw[name]) is int and kw[name] == 7
