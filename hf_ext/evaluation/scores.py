"""Per-task score readers and the layer-pairing accuracy retention (pure functions, no lm-eval needed)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping


def _is_metric_key(key) -> bool:
    """lm-eval reports metrics as `"<metric>,<filter>"`; `name`, `alias`, `sample_len`, `sample_count` and the
    stderrs are bookkeeping."""
    return "," in str(key) and "_stderr," not in str(key)


def task_scores(
    results: Mapping, metric: str | None = None, arg: str = "results", keep: Collection[str] = ()
) -> dict[str, float]:
    """Per-task scores from `{task: score}`, `{task: {metric: score}}` or an lm-eval results dict.

    In lm-eval output each benchmark counts once: a group with aggregated metrics (e.g. `mmlu`) is one entry and the
    tasks listed under it in `group_subtasks` (at any depth) are left out unless named in `keep`; a group without
    aggregated metrics (a row with only its name) is left out and its tasks count. This is how
    `hf_ext.compliance.compute_dcg` reads the same output.

    Args:
        results (`Mapping`): The scores. lm-eval output (`{"results": {task: {"acc,none": ...}}}`) is accepted as is.
        metric (`str`, *optional*): Metric to read from nested results (`"acc"` matches `"acc,none"`); required when a
            task reports several metrics.
        arg (`str`, *optional*): Argument name used in error messages.
        keep (`Collection[str]`, *optional*): Subtasks of lm-eval groups to report anyway (asked for by name).
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"{arg} must be a mapping task -> score (or an lm-eval results dict), got {type(results)}.")
    lm_eval_output = isinstance(results.get("results"), Mapping)
    members: set[str] = set()
    if lm_eval_output:
        group_subtasks = results.get("group_subtasks")
        results = results["results"]
        if isinstance(group_subtasks, Mapping):
            members = {
                str(sub)
                for group, subs in group_subtasks.items()
                if isinstance(results.get(group), Mapping) and any(map(_is_metric_key, results[group]))
                for sub in (subs or ())
            }
    out = {}
    for task, value in results.items():
        if str(task) in members and str(task) not in keep:
            continue
        if isinstance(value, Mapping):
            if lm_eval_output:
                names = [k for k in value if _is_metric_key(k)]
                if not names:  # a group without aggregated metrics: its tasks are reported instead
                    continue
            else:
                names = [k for k in value if "_stderr" not in str(k) and not isinstance(value[k], str)]
            if metric is not None:
                names = [k for k in names if k == metric or str(k).split(",")[0] == metric]
            if len(names) != 1:
                raise ValueError(f"{arg}[{task!r}] has metrics {sorted(map(str, value))}; pass metric=<name>.")
            value = value[names[0]]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{arg}[{task!r}] must be a finite number, got {value!r}.")
        out[str(task)] = float(value)
    if not out:
        raise ValueError(f"{arg} holds no task scores.")
    return out


def accuracy_retention(
    original: Mapping,
    paired: Mapping,
    metric: str | None = None,
    lower_is_better: Collection[str] = (),
) -> dict:
    """How much of the original model's score a layer-paired model keeps, per task and on average (in percent).

    `retention = 100 * paired / original` for higher-is-better metrics (accuracy) and `100 * original / paired` for
    lower-is-better ones (perplexity), so 100 means nothing lost and the paper's "95-99% retained" reads directly.

    Args:
        original (`Mapping`): Scores of the source model (`{task: score}`, nested, or lm-eval results).
        paired (`Mapping`): Scores of the layer-paired model, same tasks.
        metric (`str`, *optional*): Metric to read from nested results.
        lower_is_better (`Collection[str]`, *optional*): Tasks whose metric decreases with quality.

    Returns:
        `dict`: `per_task` (`{task: retention}`), `mean_retention`, `min_retention`.
    """
    orig = task_scores(original, metric, "original")
    pair = task_scores(paired, metric, "paired")
    if set(orig) != set(pair):
        raise ValueError(
            f"original and paired cover different tasks: {sorted(set(orig) ^ set(pair))}; evaluate both on the same tasks."
        )
    unknown = sorted(set(lower_is_better) - set(orig))
    if unknown:
        raise ValueError(f"lower_is_better names tasks that are not compared: {unknown}.")
    per_task = {}
    for task in sorted(orig):
        num, den = (orig[task], pair[task]) if task in lower_is_better else (pair[task], orig[task])
        if den == 0:
            raise ValueError(f"retention is undefined for task {task!r}: a zero denominator score.")
        per_task[task] = 100.0 * num / den
    values = list(per_task.values())
    return {"per_task": per_task, "mean_retention": sum(values) / len(values), "min_retention": min(values)}
