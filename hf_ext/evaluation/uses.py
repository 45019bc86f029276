"""lm-eval where the papers use it: layer-pairing retention curves and the data compliance gap from task results."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

from .harness import _PACKAGED, DEFAULT_TASKS, _check_run_args, evaluate_model, task_manager
from .scores import accuracy_retention, task_scores


def layer_pairing_task_sweep(
    model,
    tokenizer,
    ranges: Sequence[tuple[int, int]],
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    metric: str = "acc",
    num_fewshot: int | None = 0,
    eval_dataset=None,
    mode: str = "sublayer",
    mlp_norm: str = "per_layer",
    **kwargs,
) -> list[dict]:
    """Task accuracy (lm-eval) next to perplexity for the source model and each paired range: the retention curve.

    Args:
        model: A Llama, Mistral or Qwen2 causal LM (left untouched).
        tokenizer: Its tokenizer.
        ranges (`Sequence[tuple[int, int]]`): Ranges `[start, end)` to pair (see
            `hf_ext.models.layer_parallel.pairing_ranges`).
        tasks: lm-eval tasks; default the packaged `hf_ext_domain` and `hf_ext_cloze`.
        metric (`str`, *optional*, defaults to `"acc"`): Task metric reported and used for the retention.
        num_fewshot (`int`, *optional*, defaults to 0): Shots per prompt.
        eval_dataset (*optional*): Packed `datasets.Dataset` (`input_ids`, `labels`); adds token-level `perplexity`
            and `ppl_ratio` columns computed as in the perplexity sweep (`evaluate_causal_lm`). Checked before any
            evaluation: a dataset without these columns, an empty one and one with no token to predict (1-token
            blocks, every label -100) are refused.
        mode, mlp_norm (`str`): As in `convert_to_layer_parallel`.
        kwargs: Passed to [`evaluate_model`] (`limit`, `batch_size`, ...).

    Returns:
        `list[dict]`: one row per model (source first, `pairs=0`) with `start`, `end`, `pairs`, `effective_depth`,
        `<task>` (the task metric), `retention` (mean over tasks, percent of the source's score; see
        `layer_pairing_retention`; NaN when the source scores 0 on a task or a score is negative) and, with
        `eval_dataset`, `perplexity` and `ppl_ratio`.

    Raises:
        `TypeError`: for a range that is not two integers (`(0.5, 2.5)`, `"02"`, `(True, 3)`).
        `ValueError`: for an invalid range or argument, before the first evaluation.
        `TypeError` / `ValueError`: for a `model` that `convert_to_layer_parallel` cannot pair (another model type, no
            LM head, already converted), before the first evaluation.
    """
    from ..models.layer_parallel import convert_to_layer_parallel
    from ..models.layer_parallel.configuration_layer_parallel import (
        LayerParallelConfig,
        check_pair_attention_types,
        layer_attention_types,
        resolve_pairs,
    )
    from ..models.layer_parallel.modeling_layer_parallel import check_source_model
    from ..models.layer_parallel.sweep import check_eval_dataset, evaluate_causal_lm, pairing_ranges, ranges_as_list

    check_source_model(model)  # what convert_to_layer_parallel refuses, named as `model`, before the source's run
    if eval_dataset is not None:  # columns, emptiness, a token to predict: before the source's lm-eval run
        check_eval_dataset(eval_dataset)
    ranges = [_integer_range(r) for r in ranges_as_list(ranges)]
    if not ranges:
        raise ValueError("ranges is empty; pass e.g. pairing_ranges(num_layers, [1]).")
    num_layers = model.config.num_hidden_layers
    valid = set(pairing_ranges(num_layers))
    bad = [r for r in ranges if r not in valid]
    if bad:
        raise ValueError(
            f"ranges {bad} are not valid pairing ranges for {num_layers} layers: a range (start, end) pairs the layers "
            f"start..end-1 two by two, so it needs 0 <= start < end <= {num_layers} and an even end - start; pass "
            f"e.g. pairing_ranges({num_layers}, [1]) (one pair at every position)."
        )
    layer_types = layer_attention_types(model.config)
    for start, end in ranges:  # every range checked before the first (costly) evaluation
        try:
            check_pair_attention_types(resolve_pairs(num_layers, start, end), layer_types)
        except ValueError as err:
            raise ValueError(f"ranges: ({start}, {end}): {err}") from err
        # mode / mlp_norm against each other and the source (e.g. official_tp_split with block or an odd MLP width)
        LayerParallelConfig(source_config=model.config, lp_start=start, lp_end=end, lp_mode=mode, lp_mlp_norm=mlp_norm)
    # and `metric` against the packaged tasks (it was first read after the source model's whole evaluation); other
    # tasks are left to the score reader: loading them here would mean their data, and some need the model's arguments
    packaged = [
        t for t in _check_run_args(tasks, num_fewshot, kwargs.get("limit"), kwargs.get("seed", 0)) if t in _PACKAGED
    ]
    if packaged and isinstance(metric, str):
        from .prompting import check_reported_metric

        loaded = task_manager(include_defaults=False).load(packaged)["tasks"]
        check_reported_metric(loaded, metric, "metric", "pass one of those as metric=")
    rows, base = [], None
    for start, end in [(0, 0), *ranges]:
        lp = model if start == end else convert_to_layer_parallel(model, start, end, mode=mode, mlp_norm=mlp_norm)
        res = evaluate_model(lp, tokenizer, tasks=tasks, num_fewshot=num_fewshot, **kwargs)
        scores = task_scores(res, metric, keep=[tasks] if isinstance(tasks, str) else tasks)
        row = {
            "start": start,
            "end": end,
            "pairs": (end - start) // 2,
            "effective_depth": model.config.num_hidden_layers - (end - start) // 2,
            **scores,
        }
        if base is None:
            base = scores
        # no ratio: the source scores 0 on a task, or a score is negative (a metric such as mcc)
        undefined = [t for t in base if base[t] == 0 or base[t] < 0 or scores[t] < 0]
        row["retention"] = (
            math.nan
            if undefined
            else accuracy_retention(base, scores, lower_is_better=_lower(metric, base, res))["mean_retention"]
        )
        if eval_dataset is not None:
            row.update(perplexity=evaluate_causal_lm(lp, eval_dataset)["perplexity"])
            row["ppl_ratio"] = row["perplexity"] / rows[0]["perplexity"] if rows else 1.0
        rows.append(row)
        del lp
    return rows


def _integer_range(r) -> tuple[int, int]:
    """A range `(start, end)` of `layer_pairing_task_sweep` as Python ints (numpy integers too); anything else (floats,
    bools, a string such as "02") is refused by name: `int()` truncated (0.5, 2.5) to (0, 2) and ran that range."""
    items = None if isinstance(r, str | bytes) else list(r) if isinstance(r, Iterable) else None
    if (
        items is None
        or len(items) != 2
        or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in items)
    ):
        raise TypeError(
            f"ranges must hold (start, end) pairs of integer layer indices, got {r!r}; pass e.g. [(0, 2), (2, 6)] or "
            "pairing_ranges(num_layers, [1])."
        )
    return int(items[0]), int(items[1])


def _lower(metric: str, scores: dict, results: dict) -> list[str]:
    """The tasks of `scores` whose `metric` is lower-is-better: as lm-eval reports it with `results`
    (`results["higher_is_better"]`: `ter`, `brier_score`, a task's declared metrics), else by the name rule
    `compute_dcg` reads a metric name with (`word_perplexity,none`, `eval_loss` ...)."""
    from ..compliance.dcg import declared_lower_is_better, is_lower_is_better

    by_name = isinstance(metric, str) and is_lower_is_better(metric)
    lower = []
    for task in scores:
        declared = declared_lower_is_better(results, task, metric if isinstance(metric, str) else None)
        if declared if declared is not None else by_name:
            lower.append(task)
    return lower


def format_task_sweep_table(rows: Sequence[dict], metric: str = "acc") -> str:
    """Markdown table of [`layer_pairing_task_sweep`] rows."""
    fixed = {"start", "end", "pairs", "effective_depth", "retention", "perplexity", "ppl_ratio"}
    tasks = [k for k in rows[0] if k not in fixed]
    has_ppl = "perplexity" in rows[0]
    head = ["pairs", "range", "depth", *[f"{t} {metric}" for t in tasks], "retention %"]
    head += ["perplexity", "x source"] if has_ppl else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [str(r["pairs"]), "-" if r["pairs"] == 0 else f"[{r['start']}, {r['end']})", str(r["effective_depth"])]
        cells += [f"{r[t]:.4f}" for t in tasks] + [f"{r['retention']:.1f}"]
        cells += [f"{r['perplexity']:.3f}", f"{r['ppl_ratio']:.3f}"] if has_ppl else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compliance_gap(
    non_compliant,
    compliant,
    tokenizer=None,
    tasks: str | Sequence[str] | None = None,
    metric: str = "acc",
    relative: bool = True,
    num_fewshot: int | None = 0,
    undefined: str = "raise",
    **kwargs,
):
    """The data compliance gap from lm-eval results of a full-data and a compliant model on the same tasks.

    Args:
        non_compliant, compliant: Models (objects, `save_pretrained` folders or lm-eval `LM`s), or lm-eval results
            dicts already computed.
        tokenizer: Shared tokenizer for model objects.
        tasks: lm-eval tasks: those a model is evaluated on (default the packaged `hf_ext_domain` and
            `hf_ext_cloze`) and, with results dicts, the tasks compared, as in `compute_dcg(..., tasks=...)` (default
            every task of the results). There an lm-eval tag (e.g. the packaged `hf_ext`) and a group reported
            without scores of its own stand for their tasks, as when the models are evaluated; a group with
            aggregated scores is compared as one task.
        num_fewshot, kwargs: As in [`evaluate_model`].
        metric (`str`, *optional*, defaults to `"acc"`): Task metric compared. Checked before any evaluation against
            the packaged tasks (lm-eval's own are checked on the first model's results, before the second model is
            evaluated).
        relative (`bool`, *optional*, defaults to `True`): Percent gap (see `hf_ext.compliance.compute_dcg`).
        undefined (`str`, *optional*, defaults to `"raise"`): `"nan"` reports a task the full model scores 0 on as
            n/a instead of raising (see `compute_dcg`). `relative` and `undefined` are checked before any evaluation.

    Returns:
        `hf_ext.compliance.DCGReport` (`.to_table()`, `.to_json()`), plus the two results under `.results`.
    """
    from ..compliance import compute_dcg
    from ..utils.scores import task_list

    # as compute_dcg checks them, but before the two (costly) evaluations rather than after
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be True (percent gaps) or False (absolute gaps), got {relative!r}.")
    if not isinstance(undefined, str) or undefined not in ("raise", "nan"):
        raise ValueError(f"undefined must be 'raise' or 'nan', got {undefined!r}.")
    given = [isinstance(m, dict) and "results" in m for m in (non_compliant, compliant)]
    run_tasks = DEFAULT_TASKS if tasks is None else tasks
    if not all(given):
        # the metric against the packaged tasks before the first (costly) evaluation, as layer_pairing_task_sweep
        # does; other tasks are checked on the first results, before the second model is evaluated
        packaged = [
            t
            for t in _check_run_args(run_tasks, num_fewshot, kwargs.get("limit"), kwargs.get("seed", 0))
            if t in _PACKAGED
        ]
        if packaged and isinstance(metric, str):
            from .prompting import check_reported_metric

            loaded = task_manager(include_defaults=False).load(packaged)["tasks"]
            check_reported_metric(loaded, metric, "metric", "pass one of those as metric=")
    # with results dicts only the tasks asked for are compared (a model's results hold just the tasks it ran on); a tag
    # or a group without scores of its own stands for its tasks, as lm-eval expands it when a model is evaluated
    compared = None
    if tasks is not None and any(given):
        given_results = [m for m, is_results in zip((non_compliant, compliant), given) if is_results]
        compared = _expand_task_names(task_list(tasks, "tasks"), given_results, kwargs.get("include_path"))

    def results_of(model_or_results, is_results):
        if is_results:
            return model_or_results
        return evaluate_model(model_or_results, tokenizer, tasks=run_tasks, num_fewshot=num_fewshot, **kwargs)

    full = results_of(non_compliant, given[0])
    # `metric` read on the first results, before the second model is evaluated (also for lm-eval's own tasks)
    task_scores(full, metric, "non_compliant", set(compared or ()), compared)
    comp = results_of(compliant, given[1])
    # the direction of each task's metric: lm-eval's own `higher_is_better` in the results, else the name rule
    report = compute_dcg(full, comp, relative=relative, metric=metric, tasks=compared, undefined=undefined)
    report.results = {"non_compliant": full, "compliant": comp}
    return report


def _expand_task_names(names: list[str], results: Sequence[Mapping], include_path=None) -> list[str]:
    """`names` with each one the results dicts do not score replaced by its tasks: a group listed in a results dict's
    `group_subtasks` (lm-eval reports a group without aggregated metrics as a row without scores) by its subtasks, an
    lm-eval tag (which has no row at all) by its tasks from lm-eval's task index, as lm-eval expands both when it
    evaluates a model. Other names are kept (the caller reports them as missing); repeats are dropped."""
    from ..utils.scores import _is_metric_key

    rows = [r["results"] if isinstance(r["results"], Mapping) else {} for r in results]
    scored = [
        {str(t) for t, row in rr.items() if isinstance(row, Mapping) and any(map(_is_metric_key, row))} for rr in rows
    ]
    subtasks: dict[str, list[str]] = {}
    for r in results:
        groups = r.get("group_subtasks")
        for group, subs in groups.items() if isinstance(groups, Mapping) else ():
            subtasks.setdefault(str(group), [str(sub) for sub in subs or ()])
    indexes: dict[bool, Mapping] = {}  # built only for a name the results do not score

    def index(include_defaults: bool) -> Mapping:
        if include_defaults not in indexes:
            try:
                indexes[include_defaults] = task_manager(include_path, include_defaults=include_defaults).task_index
            except ImportError:  # results dicts need no lm-eval; without it a tag cannot be looked up
                indexes[include_defaults] = {}
        return indexes[include_defaults]

    def tag_members(name: str) -> list[str]:
        entry = index(False).get(name)  # the packaged tasks (and include_path) only: fast
        if entry is None and not name.startswith("hf_ext"):  # lm-eval's own: indexing them takes seconds
            entry = index(True).get(name)
        return sorted(entry.tags) if entry is not None and entry.kind.name == "TAG" else []

    out: list[str] = []

    def add(name: str, parents: frozenset) -> None:
        members = []
        if name not in parents and not all(name in s for s in scored):
            members = subtasks.get(name) or tag_members(name)
        if not members:
            if name not in out:
                out.append(name)
            return
        for member in members:
            add(member, parents | {name})

    for name in names:
        add(name, frozenset())
    return out
