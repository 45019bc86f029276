"""Quality sweep: perplexity of layer-paired models against the number of pairs and the position of the range."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping

import torch

from ...utils.checks import is_int as _is_integer
from ...utils.evaluation import _right_padded, keeping_train_mode
from .configuration_layer_parallel import (
    LP_MLP_NORMS,
    LP_MODES,
    LayerParallelConfig,
    check_pair_attention_types,
    layer_attention_types,
    resolve_pairs,
)


def pairing_ranges(
    num_layers: int, pair_counts: list[int] | None = None, stride: int = 1, layer_types: list[str] | None = None
) -> list[tuple[int, int]]:
    """All ranges `[start, end)` with the given numbers of pairs, at every `stride`-th start position.

    Args:
        num_layers (`int`): Depth of the source model.
        pair_counts (`list[int]`, *optional*): Numbers of pairs to try; default `1 .. num_layers // 2`.
        stride (`int`, *optional*, defaults to 1): Step between start positions.
        layer_types (`list[str]`, *optional*): Attention type of each source layer (`config.layer_types`). Ranges
            with a pair of a full and a sliding-window layer, which cannot be converted, are left out.

    Returns:
        `list[tuple[int, int]]`, sorted by number of pairs, then start.

    Raises:
        `TypeError`: for a `num_layers`, `stride` or pair count that is not an integer (a float, a string, a bool; numpy
            integers are fine) and for `pair_counts` that is not a list of them (a bare `2`: pass `[2]`).
        `ValueError`: for an impossible pair count, and for a requested pair count none of whose ranges can be
            converted (every one pairs a full with a sliding-window layer).
    """
    for name, value in (("num_layers", num_layers), ("stride", stride)):
        if not _is_integer(value):
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    num_layers, stride = int(num_layers), int(stride)
    if pair_counts is not None:
        if isinstance(pair_counts, str | bytes | Mapping) or not isinstance(pair_counts, Iterable):
            hint = f" For one count pass [{pair_counts!r}]." if _is_integer(pair_counts) else ""
            raise TypeError(
                f"pair_counts must be a list of integer numbers of pairs, e.g. [1, 2]; got {pair_counts!r}.{hint}"
            )
        pair_counts = list(pair_counts)
        wrong = [n for n in pair_counts if not _is_integer(n)]
        if wrong:
            raise TypeError(
                f"pair_counts must hold integer numbers of pairs, e.g. [1, 2]; got {wrong[0]!r} in {pair_counts!r}."
            )
        pair_counts = [int(n) for n in pair_counts]
    if num_layers < 2:
        raise ValueError(f"A model needs at least 2 layers to pair any, got num_layers={num_layers}.")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}.")
    if layer_types is not None and len(layer_types) != num_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {num_layers} layers; give one per layer.")
    counts = list(range(1, num_layers // 2 + 1)) if pair_counts is None else sorted(set(pair_counts))
    for n in counts:
        if not 1 <= n <= num_layers // 2:
            raise ValueError(f"Pair count {n} is impossible for {num_layers} layers; use 1..{num_layers // 2}.")
    ranges = []
    for n in counts:
        starts = list(range(0, num_layers - 2 * n + 1, stride))
        if starts[-1] != num_layers - 2 * n:  # always include the range that ends at the last layer
            starts.append(num_layers - 2 * n)
        if layer_types is not None:
            starts = [s for s in starts if all(layer_types[i] == layer_types[i + 1] for i in range(s, s + 2 * n, 2))]
            if not starts and pair_counts is not None:
                raise ValueError(
                    f"Every range of {n} pairs (stride {stride}) pairs a full-attention with a sliding-window layer "
                    f"(layer types {layer_types}), which cannot be converted; choose other pair counts or stride 1."
                )
        ranges += [(s, s + 2 * n) for s in starts]
    return ranges


_RANGES_FORM = "a list of (start, end) pairs of integer layer indices, e.g. [(0, 2), (2, 6)] or pairing_ranges(num_layers)"


def ranges_as_list(ranges) -> list:
    """The `ranges` argument of a sweep as a list of its entries; `TypeError` naming `ranges` and the expected form for
    one that is no list of pairs: `None`, an int, a string, or one bare range `(0, 2)` (its ints failed with "'int'
    object is not iterable")."""
    if isinstance(ranges, str | bytes | Mapping) or not isinstance(ranges, Iterable):
        raise TypeError(f"ranges must be {_RANGES_FORM}; got {ranges!r}.")
    ranges = list(ranges)
    if len(ranges) == 2 and all(isinstance(x, numbers.Integral) for x in ranges):
        raise TypeError(f"ranges must be {_RANGES_FORM}; got {tuple(ranges)!r}: for that one range pass [{tuple(ranges)!r}].")
    return ranges


def check_sweep_ranges(ranges, num_layers: int, layer_types: list[str] | None = None) -> list[tuple[int, int]]:
    """The `ranges` argument of a sweep as a list of `(start, end)` Python ints, each a valid pairing range of a model
    with `num_layers` layers (and, with `layer_types`, pairing layers of one attention type). Every range of a sweep is
    converted on its own, so ranges may overlap each other.

    Raises:
        `TypeError`: for `ranges` that is not a list of pairs (a bare `(0, 2)`, an int, `None`) and for an entry that
            is not two integers (`(0, 2, 4)`, `(0.5, 2.5)`, `"02"`, `(True, 3)`); `int()` would truncate floats.
        `ValueError`: for a reversed, odd-length, out-of-range or empty (`start == end`: it pairs nothing, a second
            source row) range, and with `layer_types` for one that pairs two attention types, naming it.
    """
    ranges = ranges_as_list(ranges)
    out = []
    for r in ranges:
        items = None if isinstance(r, str | bytes | Mapping) else list(r) if isinstance(r, Iterable) else None
        if (
            items is None
            or len(items) != 2
            or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in items)
        ):
            raise TypeError(f"ranges must be {_RANGES_FORM}; its entry {r!r} is not two integers (start, end).")
        start, end = int(items[0]), int(items[1])  # numpy integers as Python ints (sweep.json is JSON)
        if start == end:  # it pairs nothing: a second copy of the source's row, which every sweep measures first
            raise ValueError(
                f"ranges: ({start}, {end}) pairs no layers: the sweep's first row is already the unpaired source model; "
                "drop it (ranges=[] measures the source alone)."
            )
        try:
            pairs = resolve_pairs(num_layers, start, end)
            if layer_types is not None:
                check_pair_attention_types(pairs, layer_types)
        except ValueError as err:
            raise ValueError(f"ranges: ({start}, {end}): {err}") from None
        out.append((start, end))
    return out


def check_eval_dataset(dataset, arg: str = "eval_dataset") -> None:
    """Refuse a dataset [`evaluate_causal_lm`] cannot measure, before any evaluation: not a `datasets.Dataset` (or an
    object with a length whose slices `dataset[i:j]` are dicts of columns), without an `input_ids` or a `labels`
    column, empty, or with no token to predict (every label after a block's first position is -100, e.g. 1-token
    blocks), which would read as loss 0, perplexity 1: a perfect model.

    Raises:
        `TypeError` / `ValueError` naming `arg` and the fix.
    """
    kind = (
        f"{arg} must be a datasets.Dataset with input_ids and labels columns (e.g. hf_ext.data.pack_dataset's "
        f"output), got {type(dataset).__name__}"
    )
    try:
        size = len(dataset)
    except TypeError as err:
        raise TypeError(f"{kind}.") from err
    columns = getattr(dataset, "column_names", None)
    if not isinstance(columns, list):  # a duck-typed dataset: its slices must be dicts of columns
        try:
            first = dataset[0:1] if size else {}
        except (TypeError, KeyError, IndexError) as err:  # e.g. a dict of columns: no slices
            raise TypeError(f"{kind}.") from err
        if not isinstance(first, Mapping):
            raise TypeError(f"{kind} (its slices are {type(first).__name__}s, not dicts of columns).")
        columns = list(first)
    missing = [c for c in ("input_ids", "labels") if c not in columns]
    if size and missing:
        raise ValueError(
            f"{arg} has no {' and no '.join(missing)} column (it has {columns}); pass packed blocks, e.g. "
            "hf_ext.data.pack_dataset(dataset, tokenizer, block_size=...)."
        )
    if size == 0:
        raise ValueError(f"{arg} is empty; lower --block_size or give more text.")
    for start in range(0, size, 256):
        if any(label != -100 for row in dataset[start : start + 256]["labels"] for label in row[1:]):
            return
    raise ValueError(
        f"{arg} has no token to predict (every label is -100 or blocks are 1 long), so its perplexity would read "
        "1.0, a perfect model; use blocks of at least 2 tokens with labels (e.g. a larger block_size)."
    )


@torch.no_grad()
def evaluate_causal_lm(model, dataset, batch_size: int = 16) -> dict[str, float]:
    """Token-weighted next-token loss, perplexity and top-1 accuracy on a packed dataset (`input_ids`, `labels`), in
    eval mode; every module gets its own train/eval mode back afterwards.

    Args:
        model: A causal LM returning `.logits`.
        dataset: `datasets.Dataset` (or an object whose slices `dataset[i:j]` are dicts of columns) with
            `input_ids` and `labels` (-100 = ignored), as long as each other in every row. Blocks of different
            lengths (`pack_dataset(..., drop_remainder=False)`'s short last block) are right-padded inside a batch
            and the padding is not scored: the result is the token-weighted value of the blocks evaluated alone. An
            `attention_mask` column with 0s (padded rows, left or right) is honoured: a row's mask-0 positions are
            neither scored nor attended to, its leading ones (left padding) are dropped, as in `causal_lm_eval_loss`.
        batch_size (`int`, *optional*, defaults to 16): Blocks per forward pass.

    Raises:
        `TypeError` / `ValueError`: before the first forward pass, for a dataset that is not a `datasets.Dataset`
            (nor sliced into dicts of columns), lacks `input_ids` or `labels`, is empty or has no token to predict
            (a loss of 0, perplexity 1, would look like a perfect model; see [`check_eval_dataset`]), and for a
            `batch_size` that is not a positive integer; and for a row whose `input_ids` and `labels` differ in
            length, when its batch is reached.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    check_eval_dataset(dataset, "dataset")
    device = next(model.parameters()).device
    total, correct, count = 0.0, 0, 0
    with keeping_train_mode(model):
        model.eval()
        for start in range(0, len(dataset), batch_size):
            batch = dataset[start : start + batch_size]
            masks = batch.get("attention_mask")
            if masks is not None and any(0 in row for row in masks):
                # padded rows (a tokenizer's padding): each row without its leading mask-0 positions, right-padded,
                # padding not scored, as causal_lm_eval_loss scores them; fed as they were, left padding was attended
                ids, mask, labels = _right_padded(batch, "labels", torch)
                if ids.size(1) < 2:  # no row with a token to predict (every position masked out)
                    continue
                mask = mask.to(device)
            else:
                (ids, labels), mask = _right_padded_blocks(batch["input_ids"], batch["labels"], start), None
            ids, labels = ids.to(device), labels.to(device)
            masked = {} if mask is None else {"attention_mask": mask}  # packed blocks: the model's call as before
            logits = model(input_ids=ids, use_cache=False, **masked).logits[:, :-1].float()
            target = labels[:, 1:]
            valid = target != -100
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            correct += int(((logits.argmax(-1) == target) & valid).sum())
            count += int(valid.sum())
    if count == 0:  # as causal_lm_eval_loss: a loss of 0 (perplexity 1) would read as a perfect model
        raise ValueError("The evaluation dataset has no token to predict (every label is -100 or blocks are 1 long).")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / count}


def _right_padded_blocks(ids_rows, label_rows, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's `input_ids` and `labels` as tensors; blocks shorter than the batch's longest (`pack_dataset(...,
    drop_remainder=False)`'s last block) are right-padded (label -100): causal attention keeps every real position's
    logits as for the block alone, and the padding is not scored."""
    lengths = [len(row) for row in ids_rows]
    for i, (n, labels) in enumerate(zip(lengths, label_rows)):
        if len(labels) != n:
            raise ValueError(
                f"dataset row {first + i} has {n} input_ids and {len(labels)} labels; each row needs one label per "
                "input id (e.g. hf_ext.data.pack_dataset's output)."
            )
    width = max(lengths)
    if all(n == width for n in lengths):
        return torch.as_tensor(ids_rows), torch.as_tensor(label_rows)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full((len(lengths), width), -100, dtype=torch.long)
    for i, (n, row, lab) in enumerate(zip(lengths, ids_rows, label_rows)):
        ids[i, :n] = torch.as_tensor(row, dtype=torch.long)
        labels[i, :n] = torch.as_tensor(lab, dtype=torch.long)
    return ids, labels


def perplexity_sweep(
    model,
    eval_dataset,
    ranges: list[tuple[int, int]] | None = None,
    mode: str = "sublayer",
    mlp_norm: str = "per_layer",
    batch_size: int = 16,
    progress: bool = True,
    extra_eval=None,
) -> list[dict]:
    """Convert `model` with every range and measure perplexity; the first row is the unpaired source model.

    Args:
        model: A Llama, Mistral or Qwen2 causal LM (left untouched).
        eval_dataset: Packed dataset with `input_ids` and `labels`.
        ranges (`list[tuple[int, int]]`, *optional*): Ranges `[start, end)`; default [`pairing_ranges`] over all
            pair counts and positions (leaving out ranges that would pair a full with a sliding-window layer).
        mode, mlp_norm (`str`): As in [`convert_to_layer_parallel`].
        batch_size (`int`, *optional*, defaults to 16): Evaluation batch size.
        progress (`bool`, *optional*, defaults to `True`): Show a tqdm bar.
        extra_eval (`Callable[[model], dict]`, *optional*): Called on the source and on every converted model (the
            same object the perplexity was measured on, so each range is converted once); its dict is merged into
            the row (e.g. lm-eval task scores, see the layer_parallel recipe's `--eval_tasks`).

    Returns:
        `list[dict]`: rows with `start`, `end`, `pairs`, `effective_depth`, `loss`, `perplexity`, `accuracy` and
        `ppl_ratio` (perplexity / source perplexity), plus what `extra_eval` returned.

    Raises:
        `ValueError` / `TypeError`: before anything is evaluated, for a `model` that `convert_to_layer_parallel`
            cannot pair (another model type, no LM head, already converted; see `check_source_model`), an unknown
            `mode` / `mlp_norm`, a combination
            the source cannot be converted with (`mlp_norm="official_tp_split"` with `mode="block"` or with an odd
            `intermediate_size`), an invalid range or malformed `ranges` (see [`check_sweep_ranges`]), a `batch_size` that is not a positive integer and an
            `eval_dataset` that cannot be measured (see [`check_eval_dataset`]).
    """
    from tqdm.auto import tqdm

    from .modeling_layer_parallel import check_source_model, convert_to_layer_parallel

    try:
        check_source_model(model)  # what convert_to_layer_parallel refuses, named as `model`, before the first evaluation
    except (TypeError, ValueError) as err:
        if isinstance(ranges, list | tuple) and not ranges:
            # nothing would be converted; the refusal stands (the sweep is of pairable models), with the call that
            # measures the source alone
            raise type(err)(
                f"{err} With ranges=[] the sweep would only measure the source model: "
                "hf_ext.models.layer_parallel.sweep.evaluate_causal_lm(model, eval_dataset) measures any causal LM "
                "(a peft or FP8 one included)."
            ) from None
        raise
    if mode not in LP_MODES:
        raise ValueError(f"mode must be one of {list(LP_MODES)}, got {mode!r}.")
    if mlp_norm not in LP_MLP_NORMS:
        raise ValueError(f"mlp_norm must be one of {list(LP_MLP_NORMS)}, got {mlp_norm!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    num_layers = model.config.num_hidden_layers
    layer_types = layer_attention_types(model.config)
    # every range validated before evaluating anything (a malformed one failed with Python's unpacking errors)
    if ranges is None:
        ranges = pairing_ranges(num_layers, layer_types=layer_types)
    else:
        ranges = check_sweep_ranges(ranges, num_layers, layer_types)
    # Every conversion's config (mode and mlp_norm against each other and against the source, e.g. an odd
    # intermediate_size with "official_tp_split") is built, and so checked, before anything is evaluated.
    for start, end in ranges or [(0, 0)]:
        LayerParallelConfig(source_config=model.config, lp_start=start, lp_end=end, lp_mode=mode, lp_mlp_norm=mlp_norm)
    if extra_eval is not None and not callable(extra_eval):
        raise TypeError(f"extra_eval must be a callable model -> dict or None, got {type(extra_eval)}.")
    check_eval_dataset(eval_dataset)
    base = evaluate_causal_lm(model, eval_dataset, batch_size)
    rows = [dict(start=0, end=0, pairs=0, effective_depth=num_layers, **base, ppl_ratio=1.0)]
    if extra_eval is not None:
        rows[0].update(extra_eval(model))
    for start, end in tqdm(ranges, desc="layer-pairing sweep", disable=not progress):
        lp = convert_to_layer_parallel(model, start, end, mode=mode, merge=True, mlp_norm=mlp_norm)
        metrics = evaluate_causal_lm(lp, eval_dataset, batch_size)
        rows.append(
            dict(
                start=start,
                end=end,
                pairs=(end - start) // 2,
                effective_depth=num_layers - (end - start) // 2,
                **metrics,
                ppl_ratio=metrics["perplexity"] / base["perplexity"],
            )
        )
        if extra_eval is not None:
            rows[-1].update(extra_eval(lp))
        del lp
    return rows


def choose_range(rows: list[dict], max_ppl_increase: float) -> dict | None:
    """The row with the most pairs whose perplexity stays within `(1 + max_ppl_increase)` x the source's.

    Ties (same number of pairs) go to the lowest perplexity. Returns `None` when no paired row fits the budget.
    `max_ppl_increase` must be a number >= 0 (`float("inf")`: no budget, the most pairs); NaN is refused (every
    comparison with it is false, so it would silently choose nothing).
    """
    try:
        invalid = math.isnan(max_ppl_increase) or max_ppl_increase < 0
    except TypeError:
        invalid = True
    if invalid:
        raise ValueError(
            f"max_ppl_increase must be a number >= 0 (a relative increase, 0.1 = +10%), got {max_ppl_increase!r}."
        )
    fitting = [r for r in rows if r["pairs"] > 0 and r["ppl_ratio"] <= 1.0 + max_ppl_increase]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (-r["pairs"], r["perplexity"]))


def format_sweep_table(rows: list[dict], chosen: dict | None = None, task_metric: str = "acc") -> str:
    """Markdown table of the sweep rows (the chosen row marked with `*`).

    Rows with `task_scores` (`{task: score}`, lm-eval) and `retention` (percent of the source's score, mean over the
    tasks) get one `<task> <task_metric>` column per task and a `retention %` column next to the perplexity.
    """
    tasks = list(rows[0].get("task_scores") or {}) if rows else []
    head = "| pairs | range | effective depth | perplexity | x source | token acc. |"
    rule = "|---:|---|---:|---:|---:|---:|"
    if tasks:
        head += "".join(f" {t} {task_metric} |" for t in tasks) + " retention % |"
        rule += "---:|" * (len(tasks) + 1)
    lines = [head, rule]
    for r in rows:
        mark = " *" if chosen is not None and r is chosen else ""
        rng = "-" if r["pairs"] == 0 else f"[{r['start']}, {r['end']})"
        line = (
            f"| {r['pairs']} | {rng}{mark} | {r['effective_depth']} | {r['perplexity']:.3f} | "
            f"{r['ppl_ratio']:.3f} | {r['accuracy']:.4f} |"
        )
        if tasks:
            line += "".join(f" {_num(r['task_scores'][t])} |" for t in tasks)
            ret = r.get("retention")
            line += f" {ret:.1f} |" if isinstance(ret, float) and math.isfinite(ret) else " n/a |"
        lines.append(line)
    return "\n".join(lines)


def _num(value: float) -> str:
    """Accuracies with 4 decimals; large scores (perplexities of tiny models) in 4 significant digits."""
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.4g}"


def plot_sweep(
    rows: list[dict], path: str, title: str = "Layer pairing: perplexity sweep", task_metric: str = "acc"
) -> str:
    """PNG with perplexity against the start of the range, one line per number of pairs (source as a dashed line).

    With task scores in the rows (`task_scores`, `retention`) a third panel draws the retention curve: the task
    score retained (percent of the source's) against the number of pairs, at the best- and worst-perplexity position.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...utils.io import atomic_savefig

    base = rows[0]["perplexity"]
    with_tasks = "retention" in rows[0]
    fig, axes = plt.subplots(1, 3 if with_tasks else 2, figsize=(16 if with_tasks else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    counts = sorted({r["pairs"] for r in rows if r["pairs"] > 0})
    for n in counts:
        pts = sorted((r["start"], r["perplexity"]) for r in rows if r["pairs"] == n)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{n} pair{'s' if n > 1 else ''}")
    ax1.axhline(base, color="k", linestyle="--", label="source")
    ax1.set_xlabel("first paired layer (start)")
    ax1.set_ylabel("perplexity")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_title("by position of the range")
    best_rows = [min((r for r in rows if r["pairs"] == n), key=lambda r: r["perplexity"]) for n in counts]
    worst_rows = [max((r for r in rows if r["pairs"] == n), key=lambda r: r["perplexity"]) for n in counts]
    ax2.plot([0, *counts], [base, *(r["perplexity"] for r in best_rows)], marker="o", label="best position")
    ax2.plot([0, *counts], [base, *(r["perplexity"] for r in worst_rows)], marker="x", linestyle=":",
             label="worst position")  # fmt: skip
    ax2.set_xlabel("number of pairs")
    ax2.set_ylabel("perplexity")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    ax2.set_title("by number of pairs")
    if with_tasks:
        ax3 = axes[2]

        def ret(r):  # None: undefined (the source scored 0)
            return math.nan if r.get("retention") is None else r["retention"]

        ax3.plot([0, *counts], [ret(rows[0]), *map(ret, best_rows)], marker="o", label="best-perplexity position")
        ax3.plot([0, *counts], [ret(rows[0]), *map(ret, worst_rows)], marker="x", linestyle=":",
                 label="worst-perplexity position")  # fmt: skip
        ax3.axhline(100.0, color="k", linestyle="--", lw=0.8)
        ax3.set_xlabel("number of pairs")
        ax3.set_ylabel(f"task {task_metric} retained (% of source)")
        ax3.legend(fontsize=8)
        ax3.set_title("retention curve (lm-eval: " + ", ".join(rows[0]["task_scores"]) + ")")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def save_sweep(
    rows: list[dict],
    output_dir: str,
    chosen: dict | None = None,
    task_metric: str = "acc",
    note: str | None = None,
    extra: dict | None = None,
) -> dict[str, str]:
    """Write `sweep.json`, `sweep.md` (atomically, before the plot) and `sweep.png` into `output_dir`; returns their
    paths.

    `chosen` is recorded as `sweep.json`'s `chosen` and marked `*` in `sweep.md` (when it is one of `rows`); `note`
    is a line added under the table of `sweep.md`; `extra` holds more keys for `sweep.json` (e.g. the recipe's
    `sweep_suggestion` when `--lp_start/--lp_end` overrides the sweep's choice).
    """
    from ...utils.io import atomic_write_json, atomic_write_text

    reserved = {"rows", "chosen"} & set(extra or {})
    if reserved:
        raise ValueError(f"extra must not replace {sorted(reserved)} of sweep.json.")
    os.makedirs(output_dir, exist_ok=True)
    paths = {k: os.path.join(output_dir, f"sweep.{k}") for k in ("json", "md", "png")}
    atomic_write_json(paths["json"], {"rows": rows, "chosen": chosen, **(extra or {})})
    table = format_sweep_table(rows, chosen, task_metric)
    atomic_write_text(paths["md"], table + ("\n\n" + note if note else "") + "\n")
    plot_sweep(rows, paths["png"], task_metric=task_metric)
    return paths


__all__ = [
    "check_eval_dataset",
    "check_sweep_ranges",
    "choose_range",
    "evaluate_causal_lm",
    "format_sweep_table",
    "pairing_ranges",
    "perplexity_sweep",
    "plot_sweep",
    "save_sweep",
]
