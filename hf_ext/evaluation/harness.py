"""lm-evaluation-harness on hf_ext models: packaged offline tasks, `simple_evaluate` on model objects, result tables."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..utils.checks import is_int, is_real, python_scalar
from ..utils.evaluation import keeping_train_mode

#: The packaged offline tasks (lm-eval tag `hf_ext` runs both).
DEFAULT_TASKS = ("hf_ext_domain", "hf_ext_cloze")
#: Everything in the packaged task folder: tags, the two tasks and the URL-conditioned cloze variant.
_PACKAGED = {"hf_ext", "hf_ext_metadata", "hf_ext_cloze_url", *DEFAULT_TASKS}

_INSTALL_HINT = "lm-eval is not installed: `pip install 'hf_ext[eval]'` (or `pip install lm_eval`)."


def task_dir() -> str:
    """Folder of the packaged lm-eval task configs; pass it to `lm_eval --include_path`."""
    return str(Path(__file__).parent / "tasks")


def metric_path(name: str) -> str:
    """Folder of a packaged `evaluate` metric module; `evaluate.load(metric_path("data_compliance_gap"))`."""
    path = Path(__file__).parent / "metrics" / name
    if not (path / f"{name}.py").is_file():
        available = sorted(
            p.name for p in (Path(__file__).parent / "metrics").iterdir() if (p / f"{p.name}.py").is_file()
        )
        raise ValueError(f"unknown metric {name!r}; available: {available}.")
    return str(path)


def save_for_lm_eval(model, tokenizer, save_directory: str | os.PathLike) -> str:
    """Save a model and its tokenizer so that plain `lm_eval --model hf --model_args
    pretrained=<folder>,trust_remote_code=True` loads it in a process where hf_ext is not imported.

    For hf_ext architectures (FOG, layer-parallel) the folder also gets the configuration/modeling source files and
    an `auto_map` (transformers' `register_for_auto_class` mechanism); stock transformers models are saved as usual.
    The classes' auto-class registration is restored afterwards, so later `save_pretrained` calls are unaffected.

    Returns:
        `str`: the folder.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        hint = " For a peft model, pass model.merge_and_unload()." if hasattr(model, "merge_and_unload") else ""
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model)}.{hint}")
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        raise ValueError("tokenizer is required (lm-eval loads it from the same folder); pass the model's tokenizer.")
    save_directory = os.fspath(save_directory)
    model_cls, config_cls = type(model), type(model.config)
    custom = model_cls.__module__.startswith("hf_ext.")
    saved = (model_cls.__dict__.get("_auto_class"), config_cls.__dict__.get("_auto_class"))
    try:
        if custom:
            config_cls.register_for_auto_class()
            model_cls.register_for_auto_class("AutoModelForCausalLM")
        model.save_pretrained(save_directory)
        tokenizer.save_pretrained(save_directory)
    finally:
        if custom:
            model_cls._auto_class, config_cls._auto_class = saved
    return save_directory


def task_manager(
    include_path: str | Sequence[str] | None = None, include_defaults: bool = True, metadata: Mapping | None = None
):
    """An lm-eval `TaskManager` over the packaged hf_ext tasks, `include_path` and (if `include_defaults`) lm-eval's
    own tasks; indexing lm-eval's thousands of task configs takes several seconds, hence the switch. `metadata` goes
    to every task (lm-eval's `--metadata`; the packaged tasks read `domains`)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from err
    paths = [task_dir()]
    if include_path is not None:
        paths += [include_path] if isinstance(include_path, str | os.PathLike) else list(include_path)
    return TaskManager(
        include_path=[os.fspath(p) for p in paths],
        include_defaults=include_defaults,
        metadata=dict(metadata) if metadata else None,
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_int(seed):
    """A checked `seed` as a Python int (or None): lm-eval seeds Python's `random` with it, which refuses numpy
    integers (`np.int64(0)` failed there with a message not naming `seed`)."""
    return None if seed is None else int(seed)


def _check_model(model, tokenizer) -> None:
    """Refuse what `_as_lm` cannot wrap, before anything is loaded or evaluated."""
    try:
        from lm_eval.api.model import LM
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from err
    from transformers import PreTrainedModel

    if isinstance(model, LM):
        return
    if isinstance(model, str | os.PathLike):
        if not os.path.isdir(model):
            raise ValueError(
                f"model={os.fspath(model)!r} is not a folder; pass a model object or a save_pretrained folder."
            )
        return
    if not isinstance(model, PreTrainedModel):
        hint = (
            " For a peft model, pass model.merge_and_unload() (or a folder it was saved to)."
            if hasattr(model, "merge_and_unload")
            else ""
        )
        raise TypeError(
            f"model must be a transformers PreTrainedModel, a save_pretrained folder or an lm-eval LM, got "
            f"{type(model)}.{hint}"
        )
    if tokenizer is None:
        raise ValueError("tokenizer is required with a model object (lm-eval cannot infer it); pass tokenizer=...")


def _check_run_args(tasks, num_fewshot, limit, seed: object = 0) -> list[str]:
    """The task list, after checking `tasks`, `num_fewshot`, `limit` and `seed` (a `ValueError` naming the argument)."""
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, Iterable):  # tasks=3 failed with a bare "'int' object is not iterable"
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        # a string or a float failed inside lm-eval's numpy seeding with a message that did not name `seed`
        raise ValueError(f"seed must be an int (or None: lm-eval leaves its generators unseeded), got {seed!r}.")
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}.")
    # a numpy integer (`np.int64(5)`, e.g. read from an array of shot counts) is an int here, as `seed` is: it was
    # refused as "must be a non-negative int, got np.int64(5)"; the callers hand lm-eval Python numbers (`run_numbers`)
    if num_fewshot is not None and (not is_int(num_fewshot) or num_fewshot < 0):
        raise ValueError(f"num_fewshot must be a non-negative int or None, got {num_fewshot!r}.")
    if limit is not None and (
        not (is_int(limit) or is_real(limit)) or not 0 < limit < math.inf
    ):  # NaN and inf failed inside lm-eval without naming `limit`
        raise ValueError(f"limit must be a positive int (items) or float (share), got {limit!r}.")
    check_fewshot_pool(tasks, [num_fewshot])
    return tasks


def _check_lm_args(batch_size, max_length) -> None:
    """Refuse a `batch_size` or `max_length` lm-eval's `HFLM` would take and fail on later (a bare `AssertionError`
    after the model was wrapped) or run with silently (`batch_size=0` and `True` ran), naming the argument."""
    if not ((is_int(batch_size) and batch_size >= 1) or (isinstance(batch_size, str) and batch_size.startswith("auto"))):
        raise ValueError(f"batch_size must be a positive int (or lm-eval's 'auto'), got {batch_size!r}.")
    if max_length is not None and (not is_int(max_length) or max_length < 1):
        raise ValueError(
            f"max_length must be a positive int (tokens of context) or None (the model config's), got {max_length!r}."
        )


def run_numbers(*values):
    """`values` (checked `num_fewshot`, `limit`, `batch_size`, `max_length`) as the Python numbers lm-eval is written
    for: a numpy integer as an `int`, a numpy float as a `float`; None and strings (`batch_size="auto"`) unchanged."""
    return tuple(python_scalar(v) if v is not None and not isinstance(v, str) else v for v in values)


def check_fewshot_pool(tasks: Sequence[str], shots: Sequence[int | None], flag: str = "num_fewshot") -> None:
    """Refuse a shot count larger than a packaged task's few-shot pool (`ValueError` naming `flag`, the task and its
    pool size): lm-eval would only fail when it builds that count's prompts, after the evaluations before it.

    The pool is the task's `fewshot_docs()` as lm-eval loads it from the packaged folder (a tag counts for each of its
    tasks). Other tasks (lm-eval's own, an include path's) are not checked: their pool means loading their data.
    """
    most = max((k for k in shots if k), default=0)
    packaged = [t for t in ([tasks] if isinstance(tasks, str) else tasks) if t in _PACKAGED]
    if not most or not packaged:
        return
    for name, task in task_manager(include_defaults=False).load(packaged)["tasks"].items():
        docs = task.fewshot_docs() if hasattr(task, "fewshot_docs") else None
        if docs is not None and most > len(docs):
            shown = f"{flag} {most}" if flag.startswith("--") else f"{flag}={most}"
            raise ValueError(f"{name} has {len(docs)} few-shot items; {shown} needs at most {len(docs)}.")


def _as_lm(model, tokenizer, batch_size: int, device: str | None, max_length: int | None):
    """Wrap a model object or a folder in lm-eval's `HFLM` (the `--model hf` backend)."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:  # pragma: no cover
        raise ImportError(_INSTALL_HINT) from err
    from lm_eval.api.model import LM

    _check_model(model, tokenizer)
    if isinstance(model, LM):
        return model
    if isinstance(model, str | os.PathLike):
        return HFLM(
            pretrained=os.fspath(model),
            tokenizer=tokenizer,
            batch_size=batch_size,
            device=device or _default_device(),
            max_length=max_length,
        )
    device = device or str(next(model.parameters()).device)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, max_length=max_length)


def evaluate_model(
    model,
    tokenizer=None,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    max_length: int | None = None,
    include_path: str | Sequence[str] | None = None,
    seed: int = 1234,
    metadata: Mapping | None = None,
    **kwargs,
) -> dict:
    """Run `lm_eval.simple_evaluate` on a model object (or a `save_pretrained` folder) with the packaged tasks.

    A model object is scored in eval mode (lm-eval's `HFLM` switches it) and gets each module's train/eval mode back
    afterwards.

    Args:
        model: A `PreTrainedModel` (e.g. `FogForCausalLM`, `LayerParallelForCausalLM`, a PEFT-merged model), a folder
            written by `save_pretrained` (loaded by lm-eval's `HFLM`; `import hf_ext` has registered the Auto
            classes), or an lm-eval `LM`.
        tokenizer: Its tokenizer (required with a model object; read from the folder otherwise).
        tasks (`str` or `Sequence[str]`, *optional*): lm-eval task names, tags or groups; default the packaged
            `hf_ext_domain` and `hf_ext_cloze`. lm-eval's own tasks work too when their data is reachable.
        num_fewshot (`int`, *optional*): Few-shot examples per prompt (drawn from each task's `fewshot_split`).
        limit (`int` or `float`, *optional*): Evaluate only this many test items per task, or this share of them
            for a float below 1 (lm-eval reads `1.0` and larger floats as a count: `limit=1.0` is one item).
        batch_size (`int`, *optional*, defaults to 8): lm-eval batch size (a positive int, or lm-eval's `"auto"`).
        device (`str`, *optional*): Defaults to the model's device (for folders: `"cuda"` if available, else `"cpu"`).
        max_length (`int`, *optional*): Context length lm-eval truncates to (a positive int); default from the model
            config.
        include_path (`str` or list, *optional*): Extra task folders besides the packaged one.
        seed (`int`, *optional*, defaults to 1234): Seeds lm-eval's python, numpy, torch and few-shot samplers.
        metadata (`Mapping`, *optional*): Passed to every task, as lm-eval's `--metadata`; the packaged tasks read
            `domains` (e.g. `{"domains": "networking+filesystem"}`: only test items from these domains).
        kwargs: Passed to `lm_eval.simple_evaluate` (e.g. `bootstrap_iters`, `log_samples`).

    Returns:
        `dict`: lm-eval's results (`results[task]["acc,none"]`, `...["acc_stderr,none"]`, `n-samples`, `config`).
    """
    import lm_eval

    tasks = _check_run_args(tasks, num_fewshot, limit, seed)
    seed = seed_int(seed)
    _check_lm_args(batch_size, max_length)
    num_fewshot, limit, batch_size, max_length = run_numbers(num_fewshot, limit, batch_size, max_length)
    kwargs.setdefault("bootstrap_iters", 1000)
    kwargs.setdefault("log_samples", False)
    with keeping_train_mode(model), _environment_report_collected_once():  # HFLM leaves a model in eval mode
        results = lm_eval.simple_evaluate(
            model=_as_lm(model, tokenizer, batch_size, device, max_length),
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager(include_path, include_defaults=not set(tasks) <= _PACKAGED, metadata=metadata),
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **kwargs,
        )
    if results is None:  # pragma: no cover - non-zero ranks under lm-eval's own distributed mode
        return {}
    return dict(results)


_ENVIRONMENT_REPORT: list[str] = []  # torch's environment report, once collected in this process
_ENVIRONMENT_PATCH = {"depth": 0, "torch": None}  # calls inside `_environment_report_collected_once`, torch's function
_ENVIRONMENT_LOCK = threading.Lock()


@contextlib.contextmanager
def _environment_report_collected_once():
    """lm-eval's `simple_evaluate` stores torch's `get_pretty_env_info()` in its results (`pretty_env_info`); that
    report starts about a dozen subprocesses (pip, conda, nvidia-smi, ...) and took 3-4 s on every call, as long as
    scoring a tiny model. The report does not change while a process runs, so within these calls it is collected
    once per process and the same text is reused (a report that raised is not kept: the next call tries again).
    Overlapping calls (threads) share one replacement: the first to enter installs it, the last to leave puts torch's
    function back."""
    from torch.utils import collect_env

    with _ENVIRONMENT_LOCK:
        if _ENVIRONMENT_PATCH["depth"] == 0:
            collect = collect_env.get_pretty_env_info
            _ENVIRONMENT_PATCH["torch"] = collect

            def collected_once() -> str:
                with _ENVIRONMENT_LOCK:
                    if not _ENVIRONMENT_REPORT:
                        _ENVIRONMENT_REPORT.append(collect())
                    return _ENVIRONMENT_REPORT[0]

            collect_env.get_pretty_env_info = collected_once
        _ENVIRONMENT_PATCH["depth"] += 1
    try:
        yield
    finally:
        with _ENVIRONMENT_LOCK:
            _ENVIRONMENT_PATCH["depth"] -= 1
            if _ENVIRONMENT_PATCH["depth"] == 0:
                collect_env.get_pretty_env_info = _ENVIRONMENT_PATCH["torch"]
                _ENVIRONMENT_PATCH["torch"] = None


def results_rows(results: Mapping, name: str | None = None) -> list[dict]:
    """Flatten lm-eval results into rows `{"model", "task", "metric", "filter", "value", "stderr", "num_fewshot", "n"}`.

    `metric` is lm-eval's metric name (`acc`); where a task reports one metric under several filters (gsm8k's
    `strict-match` and `flexible-extract`) it is lm-eval's full key (`exact_match,strict-match`), so no two rows of a
    task share a metric name.
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("results"), Mapping):
        raise ValueError("results must be the dict returned by lm_eval.simple_evaluate (with a 'results' key).")
    rows = []
    shots = results.get("n-shot", {})
    samples = results.get("n-samples", {})
    for task, metrics in sorted(results["results"].items()):
        keys = [
            key
            for key, value in metrics.items()
            if "," in key and "_stderr," not in key and not isinstance(value, str) and not isinstance(value, bool)
        ]
        names = [key.split(",", 1)[0] for key in keys]
        for key in keys:
            metric, _filter = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{_filter}")
            rows.append(
                {
                    "model": name,
                    "task": task,
                    "metric": key if names.count(metric) > 1 else metric,
                    "filter": _filter,
                    "value": float(metrics[key]),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    "num_fewshot": shots.get(task),
                    "n": (samples.get(task) or {}).get("effective"),
                }
            )
    return rows


def format_table(rows: Sequence[Mapping]) -> str:
    """Markdown table of `results_rows` rows (value ± stderr)."""
    lines = ["| model | task | shots | metric | value | ± stderr |", "|---|---|---:|---|---:|---:|"]
    for r in rows:
        err = r.get("stderr")
        err_s = f"{err:.4f}" if isinstance(err, float) and math.isfinite(err) else ""
        lines.append(
            f"| {r.get('model') or ''} | {r['task']} | {r.get('num_fewshot', '')} | {r['metric']} | "
            f"{r['value']:.4f} | {err_s} |"
        )
    return "\n".join(lines)


def evaluate_models(
    models: Mapping[str, object],
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    num_fewshot: int | Sequence[int] | None = 0,
    tokenizer=None,
    **kwargs,
) -> list[dict]:
    """Evaluate several models on the same tasks (and shot counts) and return one row per model, shot, task, metric.

    Args:
        models (`Mapping[str, model or folder]`): Name -> `PreTrainedModel`, `save_pretrained` folder or lm-eval `LM`.
        tasks: As in [`evaluate_model`].
        num_fewshot (`int`, list of `int` or `None`, *optional*, defaults to 0): Shot counts; a list runs each
            (e.g. `[0, 5]` for the metadata-conditioning comparison).
        tokenizer: Shared tokenizer for model objects.
        kwargs: Passed to [`evaluate_model`] (`limit`, `batch_size`, ...).

    Returns:
        `list[dict]` rows (see [`results_rows`]); `format_table(rows)` renders them.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping name -> model object or folder.")
    many = isinstance(num_fewshot, Sequence) and not isinstance(num_fewshot, str)
    shots = list(num_fewshot) if many else [num_fewshot]
    if not shots:
        raise ValueError("num_fewshot is an empty list; pass shot counts such as [0, 5] (or 0, or None).")
    # Everything is checked before the first model runs: a bad entry must not cost a full evaluation of the others.
    for k in shots:
        _check_run_args(tasks, k, kwargs.get("limit"), kwargs.get("seed", 0))
    for name, model in models.items():
        try:
            _check_model(model, tokenizer)
        except (TypeError, ValueError) as err:
            raise type(err)(f"models[{name!r}]: {err}") from err
    rows = []
    for name, model in models.items():
        for k in shots:
            res = evaluate_model(model, tokenizer=tokenizer, tasks=tasks, num_fewshot=k, **kwargs)
            rows += results_rows(res, name=str(name))
    return rows
