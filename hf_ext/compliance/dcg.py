"""The data compliance gap (DCG): how much a model loses when trained only on robots.txt-compliant data."""

from __future__ import annotations

import json
import math
import os
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


#: Metrics that decrease as quality improves: a DCG on one of them flips the sign of every task's gap.
LOWER_IS_BETTER_METRICS = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def _lower_is_better_key(key: str | None) -> bool:
    """Whether a metric key read for a task (`"word_perplexity,none"`, `"perplexity"`; `None` for a bare score) names
    one of `LOWER_IS_BETTER_METRICS`."""
    return key is not None and str(key).partition(",")[0] in LOWER_IS_BETTER_METRICS


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
    lower_is_better: Collection[str] | None = None,
    tasks: Collection[str] | None = None,
    undefined: str = "raise",
) -> DCGReport:
    """Data compliance gap per task and on average.

    With scores `p_full` (model trained on all data) and `p_compliant` (trained on the robots.txt-compliant subset),
    the relative gap is `(p_full - p_compliant) / |p_full| * 100` and the absolute gap `p_full - p_compliant`;
    for metrics where lower is better (perplexity, loss) the sign is flipped, so a positive gap always means that
    compliance costs performance.

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
        lower_is_better (`Collection[str]`, *optional*): Tasks whose metric decreases with quality. Default: every
            task when `metric` is one of `LOWER_IS_BETTER_METRICS` (`"word_perplexity"`, also as lm-eval's
            `"word_perplexity,none"`); without `metric`, every task whose metric key, as read on either side, is one
            of them (a bare score on one side takes the direction of the other side's key); none otherwise (a task
            that is a bare score on both sides counts as higher-is-better: pass `lower_is_better` for a bare
            perplexity). A collection given (also `()`) is used as is.
        tasks (`Collection[str]`, *optional*): Tasks to report, the only ones read (another task of the results
            may lack `metric`), each named once; default: all tasks (both sides must have the same).
        undefined (`str`, *optional*, defaults to `"raise"`): What a relative gap does for a task where the
            non-compliant score is 0 (e.g. a small model's accuracy): `"raise"` a `ValueError`, or `"nan"`: that
            task's gap is NaN (shown as `n/a`, `None` in `to_dict`) and left out of the mean.

    Returns:
        `DCGReport` with `.to_table()` and `.to_json()`.
    """
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be True (percent gaps) or False (absolute gaps), got {relative!r}.")
    if tasks is not None:
        tasks = task_list(tasks, "tasks")
    if lower_is_better is not None:
        lower_is_better = task_list(lower_is_better, "lower_is_better")
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
    if lower_is_better is None:  # a perplexity-like metric: a higher score of the compliant model is worse
        if metric is not None:
            lower = isinstance(metric, str) and metric.partition(",")[0] in LOWER_IS_BETTER_METRICS
            lower_is_better = list(tasks) if lower else []
        else:  # each task's only metric, as read on either side: a bare score (no key) pairs with the other side's
            # key (`_same_metric`), so that key gives the direction whichever side names it
            lower_is_better = [
                t for t in tasks if _lower_is_better_key(full_keys.get(t)) or _lower_is_better_key(comp_keys.get(t))
            ]
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
