"""The lm-eval helpers' argument checks, include paths, wrapper settings and score edge cases, each checked against
what the docstrings and docs/evaluation.md promise (hand-computed expectations, no lm-eval run where none is needed)."""

import math
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
evaluate = pytest.importorskip("evaluate")

from lm_eval.api.model import LM  # noqa: E402

from hf_ext.evaluation import (  # noqa: E402
    accuracy_retention,
    check_eval_tasks,
    compliance_gap,
    evaluate_model,
    evaluate_models,
    evaluate_with_prefix,
    layer_pairing_task_sweep,
    task_dir,
    task_manager,
)


class NoLM(LM):
    """An lm-eval `LM` that must never be asked for anything."""

    def loglikelihood(self, requests, disable_tqdm=False):  # pragma: no cover
        raise AssertionError("scored")

    loglikelihood_rolling = generate_until = loglikelihood


def _llama(tok, layers=1):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def no_run(monkeypatch):
    """`lm_eval.simple_evaluate` replaced by a recorder: the keyword arguments of each call."""
    calls = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw) or {"results": {}})
    return calls


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_fewshot": True}, "num_fewshot"),
        ({"limit": True}, "limit"),
        ({"tasks": []}, "tasks"),
        ({"tasks": ["hf_ext_cloze", ""]}, "tasks"),
    ],
)
@pytest.mark.parametrize("run", [evaluate_model, evaluate_with_prefix])
def test_bad_run_arguments_are_refused_before_lm_eval_runs(run, kwargs, name, no_run):
    """A bool is not a shot count or a limit, and a task list must name at least one task."""
    with pytest.raises(ValueError, match=name):
        run(NoLM(), **{"tasks": "hf_ext_cloze", **kwargs})
    assert no_run == []


def test_a_file_is_not_a_model_folder(tmp_path, no_run):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_models({"m": str(path)}, tasks="hf_ext_cloze")
    assert no_run == []


def test_model_object_needs_a_tokenizer(small_tokenizer, no_run, tmp_path):
    with pytest.raises(ValueError, match="tokenizer is required"):
        evaluate_model(_llama(small_tokenizer), tokenizer=None, tasks="hf_ext_cloze")
    with pytest.raises(ValueError, match="tokenizer is required"):
        from hf_ext.evaluation import save_for_lm_eval

        save_for_lm_eval(_llama(small_tokenizer), None, tmp_path / "unused")
    assert no_run == []


def test_model_object_gets_the_requested_context_length_and_batch_size(small_tokenizer, no_run):
    """`max_length` and `batch_size` reach lm-eval's `HFLM` wrapper of a model object."""
    evaluate_model(_llama(small_tokenizer), small_tokenizer, tasks="hf_ext_cloze", max_length=37, batch_size=3)
    (call,) = no_run
    assert call["model"].max_length == 37 and call["model"].batch_size == 3


def test_a_prefix_must_be_a_string_or_a_function(monkeypatch):
    import hf_ext.evaluation.prompting as prompting

    def no_work(*args, **kwargs):
        raise AssertionError("the model was wrapped for lm-eval before the prefix was checked")

    monkeypatch.setattr(prompting, "_as_lm", no_work)
    with pytest.raises(TypeError, match="prefix"):
        evaluate_with_prefix(NoLM(), tasks="hf_ext_cloze", prefix=5)


def _own_task_folder(root: Path) -> str:
    """A relative folder `mytasks/` (under `root`) holding one task `my_cloze` (the packaged cloze under another name)."""
    folder = root / "mytasks"
    folder.mkdir()
    (folder / "my_cloze.yaml").write_text(f"include: {Path(task_dir()) / 'hf_ext_cloze.yaml'}\ntask: my_cloze\n")
    return "mytasks"


def test_an_include_path_given_as_one_string_is_one_folder(tmp_path, monkeypatch):
    """`include_path="mytasks"` adds that folder (not one folder per character) next to the packaged tasks, in
    `task_manager` and in the recipe-side check `check_eval_tasks`."""
    monkeypatch.chdir(tmp_path)
    folder = _own_task_folder(tmp_path)
    tm = task_manager(folder, include_defaults=False)
    assert {"my_cloze", "hf_ext_cloze", "hf_ext_domain"} <= set(tm.task_index)
    assert check_eval_tasks("my_cloze,hf_ext_domain", include_path=folder) == ["my_cloze", "hf_ext_domain"]


def test_check_eval_tasks_indexes_lm_eval_own_tasks_only_for_other_names(monkeypatch):
    """A name outside the packaged tasks triggers the (slow) index of lm-eval's own library, where it is found; an
    unknown `hf_ext*` name is refused from the packaged index alone."""
    import hf_ext.evaluation.prompting as prompting

    built = []

    class FakeManager:
        def __init__(self, include_defaults):
            self.task_index = {"hf_ext_cloze": {}, "hf_ext_domain": {}}
            if include_defaults:
                self.task_index["arc_easy"] = {}

    def fake_task_manager(include_path=None, include_defaults=True, metadata=None):
        built.append(include_defaults)
        return FakeManager(include_defaults)

    monkeypatch.setattr(prompting, "task_manager", fake_task_manager)
    assert check_eval_tasks("hf_ext_cloze,arc_easy") == ["hf_ext_cloze", "arc_easy"]
    assert built == [False, True]
    built.clear()
    with pytest.raises(ValueError, match="hf_ext_nope"):
        check_eval_tasks("hf_ext_cloze,hf_ext_nope")
    assert built == [False]


# ---------------------------------------------------------------- scores: zero and unknown tasks


def test_retention_refuses_a_zero_source_score_and_unknown_lower_is_better_tasks():
    with pytest.raises(ValueError, match="zero denominator"):
        accuracy_retention({"a": 0.0, "b": 0.5}, {"a": 0.2, "b": 0.5})
    with pytest.raises(ValueError, match="zero denominator"):
        accuracy_retention({"ppl": 5.0}, {"ppl": 0.0}, lower_is_better=["ppl"])
    with pytest.raises(ValueError, match="lower_is_better.*'nope'"):
        accuracy_retention({"a": 0.4}, {"a": 0.2}, lower_is_better=["nope"])
    assert accuracy_retention({"a": 0.4}, {"a": 0.2}, lower_is_better="a")["mean_retention"] == pytest.approx(200.0)


def _results(scores: dict, metric: str = "acc") -> dict:
    return {"results": {t: {"alias": t, f"{metric},none": v} for t, v in scores.items()}}


def test_compliance_gap_undefined_nan_reports_a_zero_full_score_as_nan():
    full, comp = _results({"a": 0.0, "b": 0.5}), _results({"a": 0.1, "b": 0.4})
    with pytest.raises(ValueError, match="undefined"):
        compliance_gap(full, comp)
    report = compliance_gap(full, comp, undefined="nan")
    gaps = {r["task"]: r["gap"] for r in report.rows}
    assert math.isnan(gaps["a"]) and gaps["b"] == pytest.approx(100 * (0.5 - 0.4) / 0.5)


def test_task_sweep_retention_is_nan_when_the_source_scores_zero(small_tokenizer, monkeypatch):
    """Documented: `retention` is NaN when the source scores 0 on a task (instead of a division error)."""
    import hf_ext.evaluation.uses as uses

    table = iter([{"t": 0.0, "u": 0.5}, {"t": 0.25, "u": 0.4}])
    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: _results(next(table)))
    rows = layer_pairing_task_sweep(_llama(small_tokenizer, layers=4), small_tokenizer, [(0, 2)], tasks=["t", "u"])
    assert [r["t"] for r in rows] == [0.0, 0.25]
    assert all(math.isnan(r["retention"]) for r in rows)


def test_mislabeled_detection_module_refuses_labels_other_than_zero_and_one(load):
    with pytest.raises(ValueError, match="references"):
        load("mislabeled_detection").compute(predictions=[0.3, 0.2, 0.1], references=[1, 2, 0])
