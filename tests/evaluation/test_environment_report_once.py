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


def test_overlapping_calls_put_torchs_function_back_when_the_last_one_leaves(monkeypatch):
    """rv25 F3: two threads in `evaluate_model` at overlapping times (A enters, B enters, A leaves, B leaves) left
    torch's `get_pretty_env_info` replaced for the rest of the process (B had saved A's replacement as the function to
    put back). Both see the one collected report, and the last to leave restores torch's own function."""
    import threading

    from torch.utils import collect_env

    def report():
        return "the report"

    monkeypatch.setattr(collect_env, "get_pretty_env_info", report)
    monkeypatch.setattr(harness, "_ENVIRONMENT_REPORT", [], raising=False)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with harness._environment_report_collected_once():
            a_in.set()
            b_in.wait(10)
            seen["a"] = collect_env.get_pretty_env_info()
        a_out.set()

    def thread_b():
        a_in.wait(10)
        with harness._environment_report_collected_once():
            b_in.set()
            a_out.wait(10)
            seen["b"] = collect_env.get_pretty_env_info()
            assert collect_env.get_pretty_env_info is not report  # A left, B is still inside: still the cache
        seen["b done"] = True

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"a": "the report", "b": "the report", "b done": True}
    assert collect_env.get_pretty_env_info is report
