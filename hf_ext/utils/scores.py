"""Per-task score reading shared by the evaluation helpers and the data compliance gap."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping


def _is_metric_key(key) -> bool:
    """lm-eval reports metrics as `"<metric>,<filter>"`; `name`, `alias`, `sample_len`, `sample_count` and the
    stderrs are bookkeeping."""
    return "," in str(key) and "_stderr," not in str(key)


def task_scores(
    results: Mapping,
    metric: str | None = None,
    arg: str = "results",
    keep: Collection[str] = (),
    tasks: Collection[str] | None = None,
    keys: dict | None = None,
) -> dict[str, float]:
    """Per-task scores from `{task: score}`, `{task: {metric: score}}` or an lm-eval results dict.

    In lm-eval output each benchmark counts once: a group with aggregated metrics (e.g. `mmlu`) is one entry and the
    tasks listed under it in `group_subtasks` (at any depth) are left out unless named in `keep`; a group without
    aggregated metrics (a row with only its name) is left out and its tasks count. The evaluation helpers and
    `hf_ext.compliance.compute_dcg` all read scores through this function.

    Args:
        results (`Mapping`): The scores. lm-eval output (`{"results": {task: {"acc,none": ...}}}`) is accepted as is.
        metric (`str`, *optional*): Metric to read from nested results (`"acc"` matches `"acc,none"`); required when a
            task reports several metrics.
        arg (`str`, *optional*): Argument name used in error messages.
        keep (`Collection[str]`, *optional*): Subtasks of lm-eval groups to report anyway (asked for by name).
        tasks (`Collection[str]`, *optional*): Read only these tasks (the others are not looked at, so a task that
            lacks `metric` does not matter unless named); default: every task. Named tasks the results lack are
            simply not in the output (the caller names them).
        keys (`dict`, *optional*): Filled with the metric key read per task (e.g. `"acc,none"`; `None` for a bare
            score), so that a caller comparing two result sets can check that they report the same metric.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"{arg} must be a mapping task -> score (or an lm-eval results dict), got {type(results)}.")
    lm_eval_output = isinstance(results.get("results"), Mapping)
    members: set[str] = set()
    if lm_eval_output:
        group_subtasks = results.get("group_subtasks")
        results = results["results"]
        if isinstance(group_subtasks, Mapping):
            # every descendant of an aggregated group: lm-eval aggregates over all its leaf tasks, also those under
            # a subgroup without aggregated metrics of its own
            children = {str(group): [str(sub) for sub in (subs or ())] for group, subs in group_subtasks.items()}
            stack = [
                sub
                for group, subs in children.items()
                if isinstance(results.get(group), Mapping) and any(map(_is_metric_key, results[group]))
                for sub in subs
            ]
            while stack:
                sub = stack.pop()
                if sub not in members:
                    members.add(sub)
                    stack.extend(children.get(sub, ()))
    out = {}
    for task, value in results.items():
        if (str(task) in members and str(task) not in keep) or (tasks is not None and str(task) not in tasks):
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
                if not names:
                    raise ValueError(
                        f"{arg}[{task!r}] has no metric {metric!r} (it has {sorted(map(str, value))}); pass a metric it "
                        "reports as metric=, or compare without this task (tasks=[...])."
                    )
            if len(names) != 1:
                raise ValueError(f"{arg}[{task!r}] has metrics {sorted(map(str, value))}; pass metric=<name>.")
            key, value = names[0], value[names[0]]
        else:
            key = None
        # numbers.Real: Python and NumPy ints and floats (`np.float32(0.5)` from a NumPy mean is a score too)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{arg}[{task!r}] must be a finite number, got {value!r}.")
        out[str(task)] = float(value)
        if keys is not None:
            keys[str(task)] = key
    if not out and tasks is None:
        raise ValueError(f"{arg} holds no task scores.")
    return out


def task_list(names, arg: str) -> list[str]:
    """Task names given as one name or a collection of names (a bare string is one task, never its characters)."""
    if isinstance(names, str):
        return [names]
    if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{arg} must be a task name or a collection of task names, got {names!r}.")
    return list(names)
