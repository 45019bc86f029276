"""lm-eval's results carry torch's environment report; collecting it costs seconds, so it is collected once."""

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation import (
    evaluate_model,  # noqa: E402
    harness,  # noqa: E402
)


def test_the_environment_report_is_collected_once_per_process_and_kept_in_every_result(small_tokenizer, monkeypatch):
    """Every `evaluate_model` call used to run torch's `get_pretty_env_info()` (about a dozen subprocesses, 3-4 s,
    as long as scoring a tiny model). Now the first call collects it and later calls reuse that text: both results
    still carry it, torch's function is itself again afterwards, and a report that raised is not kept."""
    from torch.utils import collect_env

    from hf_ext.models.fog import FogConfig, FogForCausalLM

    calls = []

    def report():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("pip is not reachable")
        return f"report {len(calls)}"

    monkeypatch.setattr(collect_env, "get_pretty_env_info", report)
    monkeypatch.setattr(harness, "_ENVIRONMENT_REPORT", [], raising=False)
    torch.manual_seed(0)
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = FogForCausalLM(FogConfig.fog(vocab_size=len(small_tokenizer), max_position_embeddings=256, **cfg)).eval()
    kwargs = dict(tasks="hf_ext_domain", limit=2, bootstrap_iters=0)
    failed = evaluate_model(model, small_tokenizer, **kwargs)  # lm-eval keeps the error's text as the report
    first, second = (evaluate_model(model, small_tokenizer, **kwargs) for _ in range(2))
    assert "pip is not reachable" in failed["pretty_env_info"]
    assert first["pretty_env_info"] == second["pretty_env_info"] == "report 2"
    assert len(calls) == 2
    assert collect_env.get_pretty_env_info is report
    assert first["results"] == second["results"]
