"""Checks of the evaluation layer against independent references (hand computation, brute force, scikit-learn, a
float64 re-implementation), written where mutation testing showed that a wrong number would have gone unnoticed.

lm-eval runs here on a scripted `LM` whose log-likelihoods are a known function of (context, continuation), so the
prompts lm-eval builds from the packaged task configs and the scores it reports can be recomputed by hand.
"""

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
evaluate = pytest.importorskip("evaluate")

from lm_eval.api.model import LM  # noqa: E402

from hf_ext.evaluation import (  # noqa: E402
    accuracy_retention,
    compliance_gap,
    evaluate_model,
    evaluate_with_prefix,
    layer_pairing_task_sweep,
    results_rows,
    task_dir,
)
from hf_ext.evaluation.task_data import DOMAIN_CHOICES  # noqa: E402

DATA = Path(task_dir()) / "data"
CHOICES = list(DOMAIN_CHOICES.values())
N_DOMAIN = 40


def _rows(name):
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def fake_ll(context: str, continuation: str) -> tuple[float, bool]:
    """The scripted model: a log-likelihood that depends on both strings (and on the continuation's length)."""
    ll = -1.0 - 6.0 * _unit(context + "\x00" + continuation) - 0.2 * len(continuation)
    return ll, _unit(continuation + context) < 0.4


class ScriptedLM(LM):
    def __init__(self):
        super().__init__()
        self.requests = []

    def loglikelihood(self, requests, disable_tqdm=False):
        self.requests += [r.args for r in requests]
        return [fake_ll(*r.args) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):  # pragma: no cover - not used by the tasks
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(scope="module")
def one_shot():
    """Both packaged tasks, 1 shot, default bootstrap, samples logged."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap in this process (a process pool costs seconds)
        return evaluate_model(
            ScriptedLM(), tasks=["hf_ext_domain", "hf_ext_cloze"], num_fewshot=1, limit=N_DOMAIN, log_samples=True
        )


def _stderr(xs):
    xs = np.asarray(xs, dtype=np.float64)
    return float(np.sqrt(((xs - xs.mean()) ** 2).sum() / (len(xs) - 1)) / np.sqrt(len(xs)))


def test_domain_prompts_choices_and_shots_are_the_configured_ones(one_shot):
    """Each choice is scored as `" " + name` after `"Passage: ...\\nTopic:"`, in label order; the shot comes from the
    few-shot pool (train documents), written as a solved example."""
    train = _rows("hf_ext_domain_train.jsonl")
    train_blocks = {f"Passage: {r['passage']}\nTopic: {CHOICES[r['label']]}" for r in train}
    samples = one_shot["samples"]["hf_ext_domain"]
    assert len(samples) == N_DOMAIN
    for s in samples:
        doc = s["doc"]
        assert CHOICES[doc["label"]] == DOMAIN_CHOICES[doc["domain"]]  # label indexes the scored choice list
        ctxs = {ctx for ctx, _ in s["arguments"]}
        assert len(ctxs) == 1
        assert [cont for _, cont in s["arguments"]] == [" " + c for c in CHOICES]
        ctx = ctxs.pop()
        question = f"Passage: {doc['passage']}\nTopic:"
        assert ctx.endswith("\n\n" + question)
        assert ctx[: -len(question) - 2] in train_blocks


def test_domain_acc_and_acc_norm_by_hand(one_shot):
    """acc: argmax of the summed log-likelihood; acc_norm: argmax of log-likelihood / characters of the choice;
    stderr: sample standard deviation / sqrt(n)."""
    acc, acc_norm = [], []
    lengths = np.array([len(c) for c in CHOICES], dtype=np.float64)
    for s in one_shot["samples"]["hf_ext_domain"]:
        lls = np.array([fake_ll(ctx, cont)[0] for ctx, cont in s["arguments"]])
        acc.append(float(np.argmax(lls) == s["doc"]["label"]))
        acc_norm.append(float(np.argmax(lls / lengths) == s["doc"]["label"]))
    res = one_shot["results"]["hf_ext_domain"]
    assert 0 < sum(acc) < N_DOMAIN and acc != acc_norm  # the scripted scores separate the two metrics
    assert res["acc,none"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert res["acc_norm,none"] == pytest.approx(np.mean(acc_norm), abs=1e-12)
    assert res["acc_stderr,none"] == pytest.approx(_stderr(acc), rel=1e-9)
    assert res["acc_norm_stderr,none"] == pytest.approx(_stderr(acc_norm), rel=1e-9)


def test_cloze_target_span_shots_and_scores_by_hand(one_shot):
    """The scored continuation is exactly the word with its leading space after the context (no extra delimiter);
    a shot is written as context + target; perplexity = exp(-mean log-likelihood), acc = share of greedy words."""
    train_blocks = {r["context"] + r["target"] for r in _rows("hf_ext_cloze_train.jsonl")}
    lls, greedy = [], []
    for s in one_shot["samples"]["hf_ext_cloze"]:
        doc = s["doc"]
        ((ctx, cont),) = s["arguments"]
        assert cont == doc["target"] and cont.startswith(" ") and not cont.startswith("  ")
        assert ctx.endswith("\n\n" + doc["context"]) and ctx[: -len(doc["context"]) - 2] in train_blocks
        ll, is_greedy = fake_ll(ctx, cont)
        lls.append(ll)
        greedy.append(float(is_greedy))
    res = one_shot["results"]["hf_ext_cloze"]
    assert res["perplexity,none"] == pytest.approx(math.exp(-np.mean(lls)), rel=1e-9)
    assert res["acc,none"] == pytest.approx(np.mean(greedy), abs=1e-12)
    assert res["acc_stderr,none"] == pytest.approx(_stderr(greedy), rel=1e-9)


def test_results_rows_report_the_evaluated_item_count_and_shots(one_shot):
    rows = {(r["task"], r["metric"]): r for r in results_rows(one_shot, "scripted")}
    assert rows[("hf_ext_domain", "acc")]["n"] == N_DOMAIN  # evaluated items (limit), not the task's 102
    assert rows[("hf_ext_domain", "acc_norm")]["num_fewshot"] == 1
    res = one_shot["results"]["hf_ext_domain"]
    assert rows[("hf_ext_domain", "acc")]["stderr"] == res["acc_stderr,none"]


def _captured_run(monkeypatch, run, **kwargs) -> dict:
    """The keyword arguments `run` hands to `lm_eval.simple_evaluate` (which is not run)."""
    seen = {}
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: seen.update(kw) or {"results": {}})
    run(ScriptedLM(), tasks="hf_ext_cloze", num_fewshot=2, **kwargs)
    return seen


@pytest.mark.parametrize("run", [evaluate_model, evaluate_with_prefix])
def test_seed_and_bootstrap_reach_lm_eval(run, monkeypatch):
    """`seed` seeds every lm-eval sampler (the few-shot one included: shots depend on it); stderrs come from 1000
    bootstrap draws unless the caller says otherwise."""
    seen = _captured_run(monkeypatch, run, seed=7)
    seeds = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    assert {k: seen[k] for k in seeds} == dict.fromkeys(seeds, 7)
    assert seen["bootstrap_iters"] == 1000 and seen["num_fewshot"] == 2
    assert _captured_run(monkeypatch, run, bootstrap_iters=0)["bootstrap_iters"] == 0


def test_prefix_column_is_computed_on_the_processed_documents():
    """A task's own `process_docs` (e.g. hellaswag's) runs first; the prefix function sees its output."""
    import datasets

    from hf_ext.evaluation.prompting import PREFIX_FIELD, _with_prefix_field

    ds = datasets.Dataset.from_list([{"q": "a"}, {"q": "b"}])
    process = _with_prefix_field(lambda d: d.map(lambda r: {"q2": r["q"] * 2}), lambda doc: f"<{doc['q2']}>")
    out = process(ds)
    assert out["q2"] == ["aa", "bb"] and out[PREFIX_FIELD] == ["<aa>", "<bb>"]


# ---------------------------------------------------------------- retention, sweep and compliance gap by hand


def test_accuracy_retention_is_the_unweighted_mean_of_per_task_ratios():
    orig = {"a": 0.5, "b": 0.8, "c": 0.2, "ppl": 10.0}
    paired = {"a": 0.25, "b": 0.8, "c": 0.3, "ppl": 20.0}
    out = accuracy_retention(orig, paired, lower_is_better=["ppl"])
    expected = {"a": 50.0, "b": 100.0, "c": 150.0, "ppl": 50.0}
    assert out["per_task"] == pytest.approx(expected)
    assert out["mean_retention"] == pytest.approx(87.5) and out["min_retention"] == pytest.approx(50.0)


def _lm_results(scores: dict, metric: str, group: dict | None = None) -> dict:
    res = {"results": {t: {"name": t, "alias": t, f"{metric},none": v} for t, v in scores.items()}}
    if group:
        res["group_subtasks"] = group
    return res


def test_task_sweep_retention_and_ppl_ratio_by_hand(small_tokenizer, monkeypatch):
    """`layer_pairing_task_sweep` with scripted lm-eval results: an explicitly asked group member is kept, a
    word-perplexity task is lower-is-better, `ppl_ratio` = paired / source perplexity."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_ext.evaluation.uses as uses
    import hf_ext.models.layer_parallel.sweep as sweep

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    # word perplexity of (group g, its member g_a, task t) for the source, [0, 2) and [2, 4)
    table = [{"g": 10.0, "g_a": 12.0, "t": 20.0}, {"g": 20.0, "g_a": 15.0, "t": 25.0},
             {"g": 11.0, "g_a": 24.0, "t": 40.0}]  # fmt: skip
    ppl = iter([5.0, 7.5, 6.0])
    calls = iter(table)
    monkeypatch.setattr(
        uses, "evaluate_model", lambda *a, **k: _lm_results(next(calls), "word_perplexity", {"g": ["g_a", "g_b"]})
    )
    monkeypatch.setattr(sweep, "evaluate_causal_lm", lambda *a, **k: {"perplexity": next(ppl)})
    blocks = Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]})  # checked up front, then scripted
    rows = layer_pairing_task_sweep(
        model,
        small_tokenizer,
        [(0, 2), (2, 4)],
        tasks=["g", "g_a", "t"],
        metric="word_perplexity",
        eval_dataset=blocks,
    )
    for row, scores in zip(rows, table):
        assert {k: row[k] for k in scores} == scores
        expected = np.mean([100 * table[0][k] / scores[k] for k in scores])  # lower is better: source / paired
        assert row["retention"] == pytest.approx(expected)
    assert [r["ppl_ratio"] for r in rows] == pytest.approx([1.0, 1.5, 1.2])


@pytest.mark.parametrize(
    "metric", ["word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity", "word_perplexity,none"]
)
def test_compliance_gap_counts_every_perplexity_type_as_lower_is_better(metric):
    """Also under lm-eval's own key (`word_perplexity,none`, e.g. the compliance recipe's --eval_metric), which kept
    the sign until 2026-12-04: -20%."""
    name = metric.partition(",")[0]
    full, comp = _lm_results({"w": 10.0}, name), _lm_results({"w": 12.0}, name)
    report = compliance_gap(full, comp, metric=metric)
    assert report.rows[0]["gap"] == pytest.approx(20.0)  # the compliant model is 20% worse: a positive gap


# ---------------------------------------------------------------- evaluate metric modules


def test_compliance_gap_module_on_negative_scores(load):
    """Relative gap = (full - compliant) / |full| * 100: on a higher-is-better score below zero (a log-likelihood) a
    worse compliant model still gives a positive gap."""
    out = load("data_compliance_gap").compute(predictions=[-2.5, 0.3], references=[-2.0, 0.4], tasks=["ll", "acc"])
    assert out["per_task"] == pytest.approx({"ll": 25.0, "acc": 25.0})
    assert out["dcg"] == pytest.approx(25.0)


def _brute_force_recall(scores, noisy, fraction):
    """Expected share of noisy examples in the top round(fraction * n), over every order that sorts the scores in
    descending order (ties broken in every possible way, uniformly)."""
    n, k = len(scores), int(round(fraction * len(scores)))
    found = [
        sum(noisy[i] for i in perm[:k])
        for perm in itertools.permutations(range(n))
        if all(scores[perm[j]] >= scores[perm[j + 1]] for j in range(n - 1))
    ]
    return float(np.mean(found)) / sum(noisy)


def test_mislabeled_detection_ties_against_brute_force_and_sklearn(load):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    scores = [3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0]
    noisy = [0, 0, 1, 0, 1, 1, 0]
    out = load("mislabeled_detection").compute(predictions=scores, references=noisy, fractions=[2 / 7, 4 / 7, 6 / 7])
    assert out["roc_auc"] == pytest.approx(roc_auc_score(noisy, scores), abs=1e-12)
    for f in (2 / 7, 4 / 7, 6 / 7):
        assert out[f"recall@{f:g}"] == pytest.approx(_brute_force_recall(scores, noisy, f), abs=1e-12)
    # the documented default fractions
    assert set(load("mislabeled_detection").compute(predictions=scores, references=noisy)) == {
        "roc_auc", "recall@0.1", "recall@0.2", "recall@0.3",
    }  # fmt: skip


def _char_bleu(reference: str, hypothesis: str) -> float:
    """Sentence BLEU over characters, orders 1-4, uniform weights, brevity penalty, no smoothing (float64)."""
    if not reference or not hypothesis:
        return 0.0
    precisions = []
    for n in range(1, 5):
        hyp = [hypothesis[i : i + n] for i in range(len(hypothesis) - n + 1)]
        ref = [reference[i : i + n] for i in range(len(reference) - n + 1)]
        if not hyp:
            return 0.0
        clipped = sum(min(hyp.count(g), ref.count(g)) for g in set(hyp))
        precisions.append(clipped / len(hyp))
    if min(precisions) == 0:
        return 0.0
    bp = 1.0 if len(hypothesis) > len(reference) else math.exp(1 - len(reference) / len(hypothesis))
    return bp * math.exp(sum(math.log(p) for p in precisions) / 4)


def test_canary_extraction_against_an_independent_bleu(load, small_tokenizer):
    """A short, partly wrong continuation: BLEU (with its brevity penalty) against the true continuation, not the
    other way round, and the approximate rate follows the `bleu_threshold` passed."""
    truth = "the canary number is 4471 and the secret word is marmalade, remember it well for later use"
    guess = "the canary numbr is 4471 and"
    window = 24
    tok = small_tokenizer
    ref_text = tok.decode(tok(truth, add_special_tokens=False)["input_ids"][:window])
    gen_text = tok.decode(tok(guess, add_special_tokens=False)["input_ids"][:window])
    bleu = round(_char_bleu(ref_text, gen_text), 2)
    assert 0.05 < bleu < 0.7 and len(gen_text) < len(ref_text)
    probe = dict(predictions=[guess, truth], references=[truth, truth], prefix_lengths=[10, 10], replications=[1, 1],
                 canary_ids=["a", "b"], tokenizer=tok, window=window)  # fmt: skip
    out = load("canary_extraction").compute(**probe)
    assert out["bleu_mean"] == pytest.approx((bleu + 1.0) / 2)
    assert out["exact"] == {10: 0.5} and out["approximate"] == {10: 0.5}  # default threshold 0.75
    low = load("canary_extraction").compute(**probe, bleu_threshold=bleu - 0.02)
    assert low["approximate"] == {10: 1.0} and low["exact"] == {10: 0.5}


def test_task_sweep_retention_takes_the_direction_lm_eval_reports(small_tokenizer, monkeypatch):
    """A metric lm-eval reports as lower-is-better (`ter`, `brier_score`, a task's declared metric) is retained as
    source / paired, as `compute_dcg` reads it; the name rule alone read `ter` higher-is-better: 10% more translation
    error showed as 110% retained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_ext.evaluation.uses as uses

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(small_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    calls = iter([{"w": 60.0, "a": 0.5}, {"w": 66.0, "a": 0.4}])

    def results(*args, **kwargs):
        out = _lm_results(next(calls), "ter")
        out["higher_is_better"] = {"w": {"ter": False}, "a": {"ter": True}}  # "a" declares its ter higher-is-better
        return out

    monkeypatch.setattr(uses, "evaluate_model", results)
    rows = layer_pairing_task_sweep(model, small_tokenizer, [(0, 2)], tasks=["w", "a"], metric="ter")
    assert rows[1]["retention"] == pytest.approx(np.mean([100 * 60.0 / 66.0, 100 * 0.4 / 0.5]))
