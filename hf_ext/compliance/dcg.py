"""The data compliance gap (DCG): how much a model loses when trained only on robots.txt-compliant data."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..utils.scores import task_list, task_scores


@dataclass
class DCGReport:
    """Per-task scores and gaps of a non-compliant (full data) and a compliant model.

    Attributes:
        rows (`list[dict]`): `task`, `non_compliant`, `compliant`, `gap` per task.
        mean_gap (`float`): Unweighted mean of the per-task gaps that are defined (NaN if none is).
        relative (`bool`): Gaps in percent of the non-compliant score (`True`) or absolute score differences.
    """

    rows: list[dict]
    mean_gap: float
    relative: bool

    @property
    def unit(self) -> str:
        return "%" if self.relative else "abs"

    def to_dict(self) -> dict:
        """JSON-safe: an undefined gap (NaN) is `None`."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        mean = None if math.isnan(self.mean_gap) else self.mean_gap
        return {"rows": rows, "mean_gap": mean, "relative": self.relative}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from ..utils.io import atomic_write_text

            atomic_write_text(os.fspath(path), text + "\n")  # temporary file, then rename
        return text

    def to_table(self) -> str:
        """Markdown table; a positive gap means the compliant model is worse."""
        lines = [f"| task | non-compliant | compliant | DCG ({self.unit}) |", "|---|---:|---:|---:|"]
        for r in self.rows:
            gap = "n/a" if math.isnan(r["gap"]) else f"{r['gap']:+.2f}"
            lines.append(f"| {r['task']} | {r['non_compliant']:.4f} | {r['compliant']:.4f} | {gap} |")
        mean = "n/a" if math.isnan(self.mean_gap) else f"{self.mean_gap:+.2f}"
        lines.append(f"| **mean** | | | {mean} |")
        return "\n".join(lines)


def is_lower_is_better(metric: str | None) -> bool:
    """Whether a metric name is one that decreases as quality improves, by this documented rule: after an lm-eval
    filter (`",none"`) is cut off, in any letter case, the name is `loss` or ends in `_loss` (`eval_loss`,
    `train_loss`), ends in `perplexity` (`perplexity`, `word_perplexity`, `byte_perplexity`, `eval_perplexity`), is
    `ppl` or ends in `_ppl`, or is `bits_per_byte` or ends in `_bits_per_byte`. Any other name (`acc`, `f1`, ...;
    `None`, a bare score) is higher-is-better; for a lower-is-better metric outside the rule (e.g. a word error rate)
    pass `lower_is_better` to `compute_dcg`."""
    if metric is None:
        return False
    name = str(metric).partition(",")[0].strip().lower()
    return name in ("loss", "ppl", "bits_per_byte") or name.endswith(("_loss", "perplexity", "_ppl", "_bits_per_byte"))


# What a HF Trainer metrics dict (`trainer.evaluate()`, `eval_results.json`, `all_results.json`) holds beside its
# metrics: keys of one evaluation run, never task names.
_TRAINER_BOOKKEEPING = re.compile(r"epoch|total_flos|\w*(?:runtime|samples_per_second|steps_per_second)")


def trainer_bookkeeping_keys(results) -> list[str]:
    """The keys of a flat results mapping that are a HF Trainer's bookkeeping (`epoch`, `*_runtime`,
    `*_samples_per_second`, `*_steps_per_second`, `total_flos`) rather than task names: such a mapping is the metrics of
    one evaluation (`trainer.evaluate()`, `eval_results.json`), not scores per task. `[]` for anything else (nested
    per-task results, lm-eval output)."""
    if not isinstance(results, Mapping) or isinstance(results.get("results"), Mapping):
        return []
    return sorted(
        str(k) for k, v in results.items() if not isinstance(v, Mapping) and _TRAINER_BOOKKEEPING.fullmatch(str(k))
    )


def _refuse_trainer_metrics(results, arg: str) -> None:
    keys = trainer_bookkeeping_keys(results)
    if keys:
        raise ValueError(
            f"{arg} is a HF Trainer metrics dict (trainer.evaluate() or eval_results.json: it has the bookkeeping keys "
            f"{keys}), not scores per task: its keys are the metrics of one evaluation, and each would be compared and "
            "averaged as a task (epoch, runtime and throughput included). Put each run's metrics under one task name "
            "and pick a metric: compute_dcg({'eval': full_metrics}, {'eval': compliant_metrics}, metric='eval_loss') "
            "(a loss or perplexity is compared lower-is-better)."
        )


def declared_lower_is_better(results, task: str, key: str | None) -> bool | None:
    """The direction lm-eval itself reports for `task`'s metric `key` (`"ter,none"`): its results dict carries
    `higher_is_better` per task and metric name (from the task's `metric_list` or lm-eval's metric registry, e.g.
    `ter` and `brier_score` are lower-is-better). `True` when lm-eval says lower is better, `False` when it says higher
    is better, `None` when the results do not say (not lm-eval output, a bare score, a direction lm-eval left
    undecided)."""
    if key is None or not isinstance(results, Mapping) or not isinstance(results.get("results"), Mapping):
        return None
    declared = results.get("higher_is_better")
    per_task = declared.get(task) if isinstance(declared, Mapping) else None
    higher = per_task.get(str(key).partition(",")[0]) if isinstance(per_task, Mapping) else None
    return (not higher) if isinstance(higher, bool) else None


def _same_metric(a: str | None, b: str | None) -> bool:
    """Whether two metric keys read for one task name the same metric: equal lm-eval keys (`"exact_match,strict-match"`
    is not `"exact_match,flexible-extract"`), or equal names where one side has no filter (`{task: {"acc": ...}}`
    beside lm-eval's `"acc,none"`). A bare score (`None`) names no metric and pairs with any."""
    if a is None or b is None:
        return True
    a, b = str(a), str(b)
    if "," in a and "," in b:
        return a == b
    return a.partition(",")[0] == b.partition(",")[0]


def compute_dcg(
    non_compliant: Mapping,
    compliant: Mapping,
    relative: bool = True,
    metric: str | None = None,
    lower_is_better: Collection[str] | bool | None = None,
    tasks: Collection[str] | None = None,
    undefined: str = "raise",
) -> DCGReport:
    """Data compliance gap per task and on average.

    With scores `p_full` (model trained on all data) and `p_compliant` (trained on the robots.txt-compliant subset),
    the relative gap is `(p_full - p_compliant) / |p_full| * 100` and the absolute gap `p_full - p_compliant`;
    for tasks where lower is better the sign is flipped, so a positive gap always means that compliance costs
    performance. Which tasks those are: `lower_is_better` when given, else the metric's name by the rule of
    `is_lower_is_better` (`loss`, `*_loss`, `*perplexity`, `ppl`, `*_ppl`, `bits_per_byte`, also with an `eval_`
    prefix or an lm-eval filter: `eval_loss`, `word_perplexity,none`).

    Args:
        non_compliant (`Mapping`): Scores of the model trained on the full corpus: `{task: score}`,
            `{task: {metric: score}}` (e.g. `evaluate` results per task) or an lm-evaluation-harness results dict
            (`{"results": {task: {"acc,none": ...}}}`).
        compliant (`Mapping`): Scores of the compliant model, same format.
        relative (`bool`, *optional*, defaults to `True`): Percent gap; `False` for absolute differences.
        metric (`str`, *optional*): Metric to read from nested results (`"acc"` also matches lm-eval's
            `"acc,none"`); needed when a task reports several metrics. Both sides must report a task under the same
            key: two different metrics (without `metric`, each side's only one) or lm-eval filters
            (`"exact_match,strict-match"` and `"exact_match,flexible-extract"`) are a `ValueError` naming the task.
        lower_is_better (`Collection[str]` or `bool`, *optional*): Tasks whose metric decreases with quality, or
            `True` (every compared task) / `False` (none). Default: every task when `metric` is lower-is-better by
            `is_lower_is_better` (`"eval_loss"`, `"loss"`, `"word_perplexity"`, also as lm-eval's
            `"word_perplexity,none"`); without `metric`, every task whose metric key, as read on either side, is (a
            bare score on one side takes the direction of the other side's key); none otherwise (a task that is a bare
            score on both sides names no metric and counts as higher-is-better: pass `lower_is_better` for a bare loss
            or perplexity, e.g. the held-out losses of the compliance recipe's `dcg_trained.json`). In lm-eval output
            the direction lm-eval reports (`results["higher_is_better"][task][metric]`, e.g. `ter` and `brier_score`
            lower-is-better) comes first, on either side; the name rule applies where it says nothing. A collection
            given (also `()`) is used as is.
        tasks (`Collection[str]`, *optional*): Tasks to report, the only ones read (another task of the results
            may lack `metric`), each named once; default: all tasks (both sides must have the same).
        undefined (`str`, *optional*, defaults to `"raise"`): What a relative gap does for a task where the
            non-compliant score is 0 (e.g. a small model's accuracy): `"raise"` a `ValueError`, or `"nan"`: that
            task's gap is NaN (shown as `n/a`, `None` in `to_dict`) and left out of the mean.

    A flat HF Trainer metrics dict (`trainer.evaluate()`, `eval_results.json`: `epoch`, `eval_runtime`,
    `eval_samples_per_second`, ... beside the metrics) is a `ValueError`: its keys are one evaluation's metrics, not
    tasks (see `trainer_bookkeeping_keys`); pass `{"eval": metrics}` per model with `metric="eval_loss"`.

    Returns:
        `DCGReport` with `.to_table()` and `.to_json()`.
    """
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be True (percent gaps) or False (absolute gaps), got {relative!r}.")
    if tasks is not None:
        tasks = task_list(tasks, "tasks")
    if lower_is_better is not None and not isinstance(lower_is_better, bool):
        lower_is_better = task_list(lower_is_better, "lower_is_better")
    _refuse_trainer_metrics(non_compliant, "non_compliant")
    _refuse_trainer_metrics(compliant, "compliant")
    if tasks is not None:
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise ValueError(
                f"tasks names {repeated} more than once; each task counts once in the mean gap, name it once."
            )
    keep = () if tasks is None else set(tasks)
    # only the tasks asked for are read: another task of the results may lack `metric` (e.g. a perplexity task
    # beside an accuracy one in one lm-eval run)
    full_keys: dict = {}
    comp_keys: dict = {}
    full = task_scores(non_compliant, metric, "non_compliant", keep, tasks, full_keys)
    comp = task_scores(compliant, metric, "compliant", keep, tasks, comp_keys)
    for task in sorted(set(full_keys) & set(comp_keys)):
        if not _same_metric(full_keys[task], comp_keys[task]):
            raise ValueError(
                f"task {task!r} reports metric {full_keys[task]!r} in non_compliant but {comp_keys[task]!r} in "
                "compliant: a gap between two different metrics (or lm-eval filters) means nothing; compare results "
                "of one metric and filter (metric= naming a key both report, e.g. metric='exact_match,strict-match'), "
                "or leave this task out (tasks=[...])."
            )
    if tasks is None:
        if set(full) != set(comp):
            raise ValueError(
                f"the two result sets cover different tasks (only non_compliant: {sorted(set(full) - set(comp))}, "
                f"only compliant: {sorted(set(comp) - set(full))}); pass tasks=[...] to compare a common subset."
            )
        tasks = sorted(full)
    else:
        tasks = list(tasks)
        missing = [t for t in tasks if t not in full or t not in comp]
        if missing or not tasks:
            raise ValueError(f"tasks {missing or tasks} are missing from one of the result sets.")
    if isinstance(lower_is_better, bool):
        lower_is_better = list(tasks) if lower_is_better else []
    elif lower_is_better is None:  # a loss- or perplexity-like metric: a higher score of the compliant model is worse
        lower_is_better = []
        for t in tasks:
            # lm-eval's own `higher_is_better` for the metric read, on either side, decides first (`ter`,
            # `brier_score` and a task's declared metrics); else the name rule
            declared = {
                declared_lower_is_better(non_compliant, t, full_keys.get(t) or comp_keys.get(t)),
                declared_lower_is_better(compliant, t, comp_keys.get(t) or full_keys.get(t)),
            } - {None}
            if declared == {True, False}:
                raise ValueError(
                    f"Task {t!r}: the two result sets declare opposite directions for its metric (lm-eval's "
                    "higher_is_better differs between non_compliant and compliant: results of other lm-eval versions "
                    "or task configs?), so the sign of its gap is undefined. Compare results of one lm-eval setup, or "
                    "say which: pass lower_is_better=[...] naming the lower-is-better tasks (True / False: all)."
                )
            if declared:
                lower = True in declared
            elif metric is not None:
                lower = isinstance(metric, str) and is_lower_is_better(metric)
            else:  # each task's only metric, as read on either side: a bare score (no key) pairs with the other
                # side's key (`_same_metric`), so that key gives the direction whichever side names it
                lower = is_lower_is_better(full_keys.get(t)) or is_lower_is_better(comp_keys.get(t))
            if lower:
                lower_is_better.append(t)
    unknown = [t for t in lower_is_better if t not in tasks]
    if unknown:
        raise ValueError(f"lower_is_better names tasks that are not compared: {unknown}.")
    if undefined not in ("raise", "nan"):
        raise ValueError(f"undefined must be 'raise' or 'nan', got {undefined!r}.")
    zero = [t for t in tasks if full[t] == 0] if relative else []
    if zero and undefined == "raise":
        raise ValueError(
            f"relative gap is undefined for a zero non-compliant score (tasks {zero}); use relative=False, or "
            "undefined='nan' to report those tasks as n/a."
        )
    rows = []
    for task in tasks:
        diff = full[task] - comp[task]
        if task in lower_is_better:
            diff = -diff
        if task in zero:
            gap = math.nan
        else:
            gap = 100.0 * diff / abs(full[task]) if relative else diff
        rows.append({"task": task, "non_compliant": full[task], "compliant": comp[task], "gap": gap})
    defined = [r["gap"] for r in rows if not math.isnan(r["gap"])]
    return DCGReport(rows, sum(defined) / len(defined) if defined else math.nan, relative)
