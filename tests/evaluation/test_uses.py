"""lm-eval where the papers use it: the layer-pairing retention sweep and the data compliance gap."""

import math

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation import (  # noqa: E402
    compliance_gap,
    evaluate_model,
    format_task_sweep_table,
    layer_pairing_task_sweep,
)

CFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2)


def _llama(tok, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, **CFG)).eval()


def test_layer_pairing_task_sweep_reports_task_scores_next_to_perplexity(small_tokenizer, corpus_test):
    from hf_ext.data import pack_dataset
    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    model = _llama(small_tokenizer, 0)
    packed = pack_dataset(corpus_test.select(range(4)), small_tokenizer, block_size=64).select(range(4))
    rows = layer_pairing_task_sweep(
        model, small_tokenizer, [(0, 2), (2, 4)], tasks=["hf_ext_cloze"], metric="perplexity", limit=3,
        eval_dataset=packed,
    )  # fmt: skip
    assert [(r["pairs"], r["start"], r["effective_depth"]) for r in rows] == [(0, 0, 4), (1, 0, 3), (1, 2, 3)]
    assert rows[0]["retention"] == pytest.approx(100.0) and rows[0]["ppl_ratio"] == 1.0
    direct = evaluate_model(convert_to_layer_parallel(model, 2, 4), small_tokenizer, tasks="hf_ext_cloze", limit=3)
    assert rows[2]["hf_ext_cloze"] == pytest.approx(direct["results"]["hf_ext_cloze"]["perplexity,none"])
    for r in rows[1:]:  # lower-is-better: retention = source / paired
        assert r["retention"] == pytest.approx(100 * rows[0]["hf_ext_cloze"] / r["hf_ext_cloze"])
        assert r["hf_ext_cloze"] != rows[0]["hf_ext_cloze"] and r["ppl_ratio"] != 1.0  # pairing changed the model
    table = format_task_sweep_table(rows, "perplexity")
    assert "hf_ext_cloze perplexity" in table and "[2, 4)" in table and table.count("\n") == 4
    with pytest.raises(ValueError, match="not valid pairing ranges"):
        layer_pairing_task_sweep(model, small_tokenizer, [(1, 2)])


def test_compliance_gap_from_lm_eval_results(small_tokenizer):
    from hf_ext.compliance import compute_dcg

    full, comp = _llama(small_tokenizer, 1), _llama(small_tokenizer, 2)
    report = compliance_gap(full, comp, small_tokenizer, metric="perplexity", tasks=["hf_ext_cloze"], limit=3)
    res_full, res_comp = report.results["non_compliant"], report.results["compliant"]
    p_full = res_full["results"]["hf_ext_cloze"]["perplexity,none"]
    p_comp = res_comp["results"]["hf_ext_cloze"]["perplexity,none"]
    assert report.rows[0]["gap"] == pytest.approx(100 * (p_comp - p_full) / p_full)  # perplexity: lower is better
    again = compute_dcg(res_full, res_comp, metric="perplexity", lower_is_better=["hf_ext_cloze"])
    assert again.mean_gap == pytest.approx(report.mean_gap) and math.isfinite(report.mean_gap)
    # precomputed results are accepted as they are (no re-evaluation), accuracy on both packaged tasks
    acc = compliance_gap(res_full, res_comp, metric="acc", relative=False)
    assert [r["task"] for r in acc.rows] == ["hf_ext_cloze"] and "DCG (abs)" in acc.to_table()


def test_task_sweep_refuses_a_range_mixing_attention_types_before_evaluating(small_tokenizer, monkeypatch):
    """Qwen2 with full layers 0-1 and sliding layers 2-3: the range (1, 3) pairs a full with a sliding layer. It is
    refused before the first evaluation, not after evaluating the source and the earlier ranges."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import hf_ext.evaluation.uses as uses

    cfg = Qwen2Config(
        vocab_size=len(small_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=2,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    evaluated = []
    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: evaluated.append(1) or {})
    with pytest.raises(ValueError, match=r"ranges: \(1, 3\).*attention types"):
        layer_pairing_task_sweep(model, small_tokenizer, [(0, 2), (1, 3)], tasks="hf_ext_cloze")
    assert evaluated == []


@pytest.mark.parametrize("mode,intermediate", [("block", 32), ("sublayer", 33)])
def test_task_sweep_refuses_an_impossible_conversion_before_evaluating(small_tokenizer, monkeypatch, mode, intermediate):
    """`mlp_norm="official_tp_split"` with block pairs or an odd MLP width is refused before the source is evaluated
    (was: after the source's lm-eval run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_ext.evaluation.uses as uses

    cfg = LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=16, intermediate_size=intermediate,
                      num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    evaluated = []
    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: evaluated.append(1) or {})
    with pytest.raises(ValueError, match="official_tp_split"):
        layer_pairing_task_sweep(LlamaForCausalLM(cfg).eval(), small_tokenizer, [(0, 2)], tasks="hf_ext_cloze",
                                 mode=mode, mlp_norm="official_tp_split")  # fmt: skip
    assert evaluated == []


def test_task_sweep_refuses_a_metric_a_task_does_not_report_before_evaluating(small_tokenizer, monkeypatch):
    """hf_ext_domain has no perplexity: refused before the first evaluation (was: after the source model's whole
    lm-eval run, by the score reader)."""
    import hf_ext.evaluation.uses as uses

    evaluated = []
    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: evaluated.append(1) or {})
    model = _llama(small_tokenizer, 0)
    with pytest.raises(ValueError, match=r"^metric: task 'hf_ext_domain' reports \['acc', 'acc_norm'\], not 'perp"):
        layer_pairing_task_sweep(model, small_tokenizer, [(0, 2)], metric="perplexity")
    with pytest.raises(ValueError, match="not 'acc_norm,none'"):  # lm-eval's key form is read as its name
        layer_pairing_task_sweep(model, small_tokenizer, [(0, 2)], tasks=["hf_ext_cloze"], metric="acc_norm,none")
    assert evaluated == []


def _run(scores, **extra):
    results = {t: {"alias": t, "acc,none": a, "acc_stderr,none": 0.01} for t, a in scores.items()}
    return {"results": {**results, **extra}, "group_subtasks": {t: [] for t in [*scores, *extra]}}


def test_compliance_gap_of_results_dicts_compares_only_the_tasks_asked_for():
    """With lm-eval result dicts, `tasks=` was ignored: every task of the runs was averaged in (mean 2.5, not the
    arc_easy gap 5.0), and a perplexity task of the same run raised 'has no metric acc'."""
    from hf_ext.compliance import compute_dcg

    full, comp = _run({"arc_easy": 0.60, "piqa": 0.70}), _run({"arc_easy": 0.57, "piqa": 0.70})
    for tasks in (["arc_easy"], "arc_easy"):
        report = compliance_gap(full, comp, tasks=tasks, metric="acc")
        assert [r["task"] for r in report.rows] == ["arc_easy"] and report.mean_gap == pytest.approx(5.0)
    assert compliance_gap(full, comp, metric="acc").mean_gap == pytest.approx(2.5)  # no tasks=: all of them
    ppl = {"wikitext": {"alias": "wikitext", "word_perplexity,none": 20.0}}
    full, comp = _run({"arc_easy": 0.60}, **ppl), _run({"arc_easy": 0.57}, **ppl)
    report = compliance_gap(full, comp, tasks=["arc_easy"], metric="acc")
    assert report.to_dict() == compute_dcg(full, comp, metric="acc", tasks=["arc_easy"]).to_dict()
    assert report.results == {"non_compliant": full, "compliant": comp}


def test_compliance_gap_refuses_a_metric_a_task_does_not_report_before_evaluating(small_tokenizer, monkeypatch):
    """hf_ext_domain has no perplexity: refused before either model is evaluated (was: after both lm-eval runs, by
    the score reader). For lm-eval's own tasks the metric is read on the first model's results, before the second
    model is evaluated."""
    import hf_ext.evaluation.uses as uses

    evaluated = []
    no_ppl = _run({"arc_easy": 0.5})
    monkeypatch.setattr(uses, "evaluate_model", lambda *a, **k: evaluated.append(1) or no_ppl)
    full, comp = _llama(small_tokenizer, 1), _llama(small_tokenizer, 2)
    with pytest.raises(ValueError, match=r"^metric: task 'hf_ext_domain' reports \['acc', 'acc_norm'\], not 'perp"):
        compliance_gap(full, comp, small_tokenizer, tasks=["hf_ext_domain"], metric="perplexity")
    with pytest.raises(ValueError, match=r"^metric: task 'hf_ext_domain'"):  # the default tasks
        compliance_gap(full, comp, small_tokenizer, metric="word_perplexity")
    with pytest.raises(ValueError, match=r"^metric: task 'hf_ext_domain'"):  # a model beside a results dict
        compliance_gap(no_ppl, comp, small_tokenizer, tasks=["hf_ext_domain"], metric="perplexity")
    assert evaluated == []
    with pytest.raises(ValueError, match=r"non_compliant\['arc_easy'\] has no metric 'perplexity'"):
        compliance_gap(full, comp, small_tokenizer, tasks=["arc_easy"], metric="perplexity")
    assert evaluated == [1]  # the compliant model was not evaluated
