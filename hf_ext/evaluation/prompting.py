"""Recipe-side lm-eval helpers: `--eval_tasks`/`--eval_fewshot` checked before any work, and evaluation with a
prompt prefix placed once in front of every prompt (MeCo's conditional inference: `"URL: en.wikipedia.org\\n\\n"`
before the few-shot examples and the question)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..utils.evaluation import keeping_train_mode
from .harness import _PACKAGED, DEFAULT_TASKS, _as_lm, _check_lm_args, _check_run_args, task_manager

#: Document field that carries a per-document prefix (see [`evaluate_with_prefix`]).
PREFIX_FIELD = "hf_ext_prompt_prefix"


def check_eval_tasks(
    text: str | None,
    flag: str = "--eval_tasks",
    metric: str | None = None,
    require_fields: Sequence[str] = (),
    include_path: str | Sequence[str] | None = None,
) -> list[str] | None:
    """Parse and check a comma-separated list of lm-eval task names before a recipe does any work.

    Checks that lm-eval is installed, that every name is a task, group or tag lm-eval knows (the packaged tasks plus
    lm-eval's own; indexing those takes several seconds, so it only happens when a name is not an `hf_ext*` one) and,
    when `metric` or `require_fields` are given, loads the tasks to check that each reports `metric` and that its
    test documents carry `require_fields` (e.g. a `url` for URL-conditioned prompts).

    Returns:
        `list[str]` of task names, or `None` when `text` is `None` (evaluation off).

    Raises:
        `ValueError` naming `flag` and the fix.
    """
    if text is None:
        return None
    names = [t.strip() for t in str(text).split(",")]
    if not names or not all(names):
        raise ValueError(
            f"{flag} must be comma-separated lm-eval task names such as 'hf_ext_cloze,hf_ext_domain', got {text!r}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{flag} names a task twice: {text!r}.")
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise ValueError(f"{flag} needs lm-evaluation-harness: pip install 'hf_ext[eval]'.") from err
    tm = task_manager(include_path, include_defaults=False)  # the packaged tasks only: fast
    unknown = [n for n in names if n not in tm.task_index]
    if unknown and not any(n.startswith("hf_ext") for n in unknown):  # hf_ext_* names can only be packaged ones
        tm = task_manager(include_path, include_defaults=True)
        unknown = [n for n in names if n not in tm.task_index]
    if unknown:
        raise ValueError(
            f"{flag}: unknown lm-eval task(s) {unknown}; the packaged offline tasks are {sorted(DEFAULT_TASKS)} "
            "(see docs/evaluation.md), lm-eval's own are listed by `lm_eval ls tasks`."
        )
    if metric is not None or require_fields:
        try:
            loaded = tm.load(names)["tasks"]
        except Exception as err:  # lm-eval raises many kinds (missing data, no network)
            raise ValueError(f"{flag}: lm-eval could not load {names}: {err}") from err
        if metric is not None:
            check_reported_metric(loaded, metric, flag, "pick the metric with --eval_metric")
        for name, task in loaded.items():
            if require_fields:
                docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
                first = docs[0] if docs is not None and len(docs) else {}
                missing = [f for f in require_fields if f not in first]
                if missing:
                    raise ValueError(
                        f"{flag}: the documents of task {name!r} have no {missing} field (fields: {sorted(first)}), "
                        "which the conditioned prompts need; use tasks that carry it (hf_ext_cloze does)."
                    )
    return names


def check_reported_metric(loaded: Mapping, metric: str, flag: str, fix: str) -> None:
    """Refuse `metric` when a loaded lm-eval task (`TaskManager.load(...)["tasks"]`) lists its metrics and `metric`
    (`"acc"`, or lm-eval's key `"acc,none"`) is not one of them: a `ValueError` naming `flag`, the task and `fix`."""
    name_only = metric.partition(",")[0]
    for name, task in loaded.items():
        reported = [m["metric"] for m in task.config.metric_list or [] if isinstance(m.get("metric"), str)]
        if reported and name_only not in reported:
            raise ValueError(f"{flag}: task {name!r} reports {reported}, not {metric!r}; {fix}.")


def parse_shots(text: str | int | None, flag: str = "--eval_fewshot") -> list[int]:
    """`"0,5"` -> `[0, 5]` (non-negative, distinct shot counts)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    try:
        shots = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"{flag} must be comma-separated shot counts like '0,5', got {text!r}.") from err
    if not shots or any(k < 0 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"{flag} must be distinct non-negative shot counts like '0,5', got {text!r}.")
    return shots


def evaluate_with_prefix(
    model,
    tokenizer=None,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    prefix: str | Callable[[dict], str] = "",
    num_fewshot: int | None = 0,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    max_length: int | None = None,
    include_path: str | Sequence[str] | None = None,
    seed: int = 1234,
    metadata: Mapping | None = None,
    encode_prefix_apart: bool = False,
    **kwargs,
) -> dict:
    """Like [`evaluate_model`], with `prefix` placed once at the very start of every prompt (lm-eval's task
    `description`: before the few-shot examples and the test document).

    Args:
        prefix (`str` or `Callable[[dict], str]`): A string (a Jinja template over the test document's fields, e.g.
            `"URL: {{host}}\\n\\n"`) or a function of the test document. Starting it with the tokenizer's BOS string
            makes lm-eval's `HFLM` encode the prompt as `[BOS] prefix ...` without adding another BOS.
        encode_prefix_apart (`bool`, *optional*, defaults to `False`): Tokenize the prefix and the rest of the prompt
            separately, as metadata-conditioned training encodes a document's metadata prefix and its text (MeCo's
            `URL: host\\n\\n` then the document: a byte-level BPE may merge the prefix's last characters with the
            next ones when the whole prompt is encoded at once). Needs lm-eval's `HFLM` (a model object or folder).
        Others (`metadata` too, e.g. `{"domains": "filesystem"}`): as in [`evaluate_model`], and checked as there
            (`batch_size` a positive int or `"auto"`, `max_length` a positive int or `None`) before the model is
            wrapped.

    Returns:
        `dict`: lm-eval's results.
    """
    import lm_eval

    tasks = _check_run_args(tasks, num_fewshot, limit)
    _check_lm_args(batch_size, max_length)  # as evaluate_model: 0, -3 and True ran, a bad max_length failed in lm-eval
    if not (isinstance(prefix, str) or callable(prefix)):
        raise TypeError(f"prefix must be a string or a callable doc -> str, got {type(prefix)}.")
    with keeping_train_mode(model):  # HFLM switches a model object to eval mode
        lm = _as_lm(model, tokenizer, batch_size, device, max_length)
        prefixes: set[str] = set()
        if encode_prefix_apart:
            _encode_prefixes_apart(lm, prefixes)
            if isinstance(prefix, str):  # rendered per document as lm-eval renders a description, and collected
                prefix = _rendered(prefix)
        tm = task_manager(include_path, include_defaults=not set(tasks) <= _PACKAGED, metadata=metadata)
        loaded = list(tm.load(tasks)["tasks"].values())  # fresh Task objects: the settings below touch only these
        for task in loaded:
            if callable(prefix):
                task.set_config("process_docs", _with_prefix_field(task.config.process_docs, prefix, prefixes))
                task.set_config("description", PREFIX_FIELD)
            else:
                task.set_config("description", prefix)
        kwargs.setdefault("bootstrap_iters", 1000)
        kwargs.setdefault("log_samples", False)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=loaded,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=tm,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **kwargs,
        )
    return dict(results) if results is not None else {}


def _rendered(template: str) -> Callable[[dict], str]:
    """`template` rendered for each document as lm-eval renders a task `description` (Jinja over its fields, in
    lm-eval's own Jinja environment), compiled once: lm-eval's `apply_template` compiles it again for every document."""
    from lm_eval.utils import env

    compiled = env.from_string(template)
    return lambda doc: compiled.render(**doc)


def _with_prefix_field(process_docs, prefix: Callable[[dict], str], seen: set[str] | None = None):
    """The task's `process_docs` followed by a column holding each document's prefix (read by `description`); the
    prefixes are also added to `seen`."""

    def process(dataset):
        if process_docs is not None:
            dataset = process_docs(dataset)
        rows = dataset.to_list() if hasattr(dataset, "to_list") else dataset  # one read, not a formatted read per row
        column = [str(prefix(dict(doc))) for doc in rows]
        if seen is not None:
            seen.update(column)
        return dataset.add_column(PREFIX_FIELD, column)

    return process


def _encode_prefixes_apart(lm, prefixes: set[str]) -> None:
    """Make lm-eval's `HFLM` `lm` encode a string that starts with one of `prefixes` (the longest that matches, filled
    in while the tasks load) as the prefix's tokens followed by the rest's own tokens."""
    import torch
    from lm_eval.models.huggingface import HFLM

    if not isinstance(lm, HFLM):
        raise TypeError(
            f"encode_prefix_apart needs lm-eval's HFLM (a model object or a folder), got {type(lm).__name__}."
        )
    tokenizer, encode, batch_encode = lm.tokenizer, lm.tok_encode, lm.tok_batch_encode

    def split(string: str) -> str | None:
        return max((p for p in prefixes if p and string.startswith(p)), key=len, default=None)

    def tok_encode(string, add_special_tokens=None, left_truncate_len=None, **kwargs):
        prefix = split(string)
        if prefix is None:
            return encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs)
        ids = encode(prefix, add_special_tokens=add_special_tokens, **kwargs)
        ids = ids + tokenizer.encode(string[len(prefix) :], add_special_tokens=False)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_batch_encode(strings, padding_side="left", left_truncate_len=None, truncation=False):
        if not any(split(s) for s in strings):
            return batch_encode(strings, padding_side, left_truncate_len, truncation)
        rows = [tok_encode(s, left_truncate_len=left_truncate_len) for s in strings]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, cols] = torch.tensor(row, dtype=torch.long)
            mask[i, cols] = 1
        return ids, mask

    lm.tok_encode, lm.tok_batch_encode = tok_encode, tok_batch_encode
