"""Per-task score readers and the layer-pairing accuracy retention (pure functions, no lm-eval needed)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ..utils.scores import task_list, task_scores


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

    Raises:
        `ValueError`: tasks differ, a score is negative (no ratio), or a denominator score is zero.
    """
    lower_is_better = task_list(lower_is_better, "lower_is_better")
    orig = task_scores(original, metric, "original")
    pair = task_scores(paired, metric, "paired")
    if set(orig) != set(pair):
        raise ValueError(
            f"original and paired cover different tasks: {sorted(set(orig) ^ set(pair))}; evaluate both on the same tasks."
        )
    unknown = sorted(set(lower_is_better) - set(orig))
    if unknown:
        raise ValueError(f"lower_is_better names tasks that are not compared: {unknown}.")
    negative = [task for task in sorted(orig) if orig[task] < 0 or pair[task] < 0]
    if negative:
        task = negative[0]
        raise ValueError(
            f"retention is a ratio of non-negative scores, but task {task!r} scores original={orig[task]!r}, "
            f"paired={pair[task]!r}; leave metrics that can be negative (e.g. mcc) out of the comparison."
        )
    per_task = {}
    for task in sorted(orig):
        num, den = (orig[task], pair[task]) if task in lower_is_better else (pair[task], orig[task])
        if den == 0:
            raise ValueError(f"retention is undefined for task {task!r}: a zero denominator score.")
        per_task[task] = 100.0 * num / den
    values = list(per_task.values())
    return {"per_task": per_task, "mean_retention": sum(values) / len(values), "min_retention": min(values)}
