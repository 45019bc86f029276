"""Filter a corpus by robots.txt AI-crawler opt-outs (datasets or datatrove) and report retention and the DCG.

Run as `python scripts/compliance.py`, `accelerate launch scripts/compliance.py` or `hf-ext run compliance`, in one
process (a multi-process launch is refused up front; filter faster with `--num_proc`, the `datasets` workers, or, for
a crawl-scale corpus, `RobotsTxtFilter` in a datatrove pipeline under datatrove's own Local/Slurm executors, see
docs/compliance.md; `--engine datatrove` here runs that step once, in this process). With no arguments it filters the
embedded corpus against the example robots.txt snapshot shipped with hf_ext.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field


@dataclass
class ComplianceArguments:
    robots: str | None = field(
        default=None,
        metadata={"help": "robots.txt snapshot: a folder of <host>.txt files, a .jsonl or a .parquet file; "
                  "default: the example snapshot for the embedded corpus."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset or local dataset folder; default: the embedded offline corpus."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local .json/.jsonl/.csv/.parquet file with a URL column (not .txt)."}
    )
    split: str = field(default="train", metadata={"help": "Split to filter."})
    url_column: str = field(default="url", metadata={"help": "Column holding each document's URL."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text (for token counts)."})
    domain_column: str | None = field(
        default=None, metadata={"help": "Column to group statistics by; default: 'domain' if present, else the host."}
    )
    user_agents: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated user agents to check, each a product token alone or with a version (GPTBot, "
            "CCBot/2.0; not a full User-Agent header); default: the AI agent list plus '*'."
        },
    )
    host_fallback: str = field(default="www", metadata={"help": "Host lookup: exact, www or parents."})
    backend: str = field(
        default="rfc9309",
        metadata={"help": "robots.txt engine: rfc9309 (hf_ext), protego (the paper's) or google (fast-robotstxt)."},
    )
    status_policy: str = field(
        default="rfc9309",
        metadata={
            "help": "rfc9309: hosts whose robots.txt was unreachable (5xx, network error) are fully disallowed; "
            "paper: only a readable robots.txt opts out."
        },
    )
    engine: str = field(
        default="datasets",
        metadata={
            "help": "datasets (Dataset.map, with --num_proc workers) or datatrove (RobotsTxtFilter run once in this "
            "process: a check that the step decides as Dataset.map does, not a faster path; for scale run the step "
            "under datatrove's LocalPipelineExecutor/SlurmPipelineExecutor, see docs/compliance.md)."
        },
    )
    num_proc: int | None = field(
        default=None,
        metadata={
            "help": "Worker processes for the datasets annotation (--engine datasets) and the token counts; the "
            "--engine datatrove step runs in one process."
        },
    )
    vocab_size: int = field(default=4096, metadata={"help": "Tokenizer used to count tokens (embedded BPE)."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Count tokens with this tokenizer instead."})
    output_dir: str = field(default="outputs/compliance", metadata={"help": "Where statistics and plots are saved."})
    save_filtered: bool = field(default=False, metadata={"help": "Also save the compliant dataset (save_to_disk)."})
    dcg_non_compliant: str | None = field(
        default=None, metadata={"help": "JSON results of a model trained on all data (for the DCG report)."}
    )
    dcg_compliant: str | None = field(default=None, metadata={"help": "JSON results of the compliant model."})
    dcg_metric: str | None = field(
        default=None,
        metadata={
            "help": "Metric to read from nested --dcg_non_compliant/--dcg_compliant files. With --dcg_lower_is_better "
            "auto, a loss or perplexity (loss, *_loss, *perplexity, ppl, *_ppl, bits_per_byte; also with an lm-eval "
            "filter, e.g. word_perplexity,none; without this flag: each task's only metric) flips the gaps' sign."
        },
    )
    dcg_lower_is_better: str = field(
        default="auto",
        metadata={
            "help": "Whether the scores of --dcg_non_compliant/--dcg_compliant are lower-is-better (losses, "
            "perplexities: the gaps' sign is flipped, so a positive gap means compliance costs): true, false, or auto "
            "(lm-eval files: the higher_is_better lm-eval reports, e.g. ter and brier_score are lower-is-better; else from "
            "the metric names: loss, *_loss, *perplexity, ppl, *_ppl, bits_per_byte; a task given as a bare "
            "score on both sides names no metric and is refused, e.g. the held-out losses of dcg_trained.json: pass "
            "true for them)."
        },
    )
    dcg_absolute: bool = field(
        default=False,
        metadata={"help": "The --dcg_non_compliant/--dcg_compliant report: absolute, not relative (percent), gaps."},
    )
    train_models: bool = field(
        default=False,
        metadata={
            "help": "Measure the DCG by training, in the paper's two settings: (a) from scratch, one model on the "
            "compliant data and one on all data with the same token budget; (b) continual pretraining, the "
            "compliant model continued on the non-compliant remainder vs the full model continued on all data. "
            "Every model is evaluated on the held-out split per domain."
        },
    )
    train_steps: int = field(default=300, metadata={"help": "Optimizer steps of each from-scratch model."})
    continual_steps: int = field(default=150, metadata={"help": "Optimizer steps of continual pretraining."})
    train_block_size: int = field(default=64, metadata={"help": "Tokens per training block (>= 2)."})
    train_batch_size: int = field(default=16, metadata={"help": "Blocks per optimizer step."})
    train_learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate (cosine decay)."})
    model_hidden_size: int = field(
        default=64, metadata={"help": "Hidden size of the trained Llama models (4 heads: a multiple of 8)."}
    )
    model_layers: int = field(default=2, metadata={"help": "Layers of the trained Llama models."})
    seed: int = field(default=0, metadata={"help": "Seed of model initialisation and data order (--train_models)."})
    eval_tasks: str | None = field(
        default=None,
        metadata={
            "help": "With --train_models, also compute the DCG from lm-evaluation-harness results of the trained "
            "models on these comma-separated tasks (e.g. hf_ext_cloze,hf_ext_domain: the packaged offline tasks; "
            "needs the eval extra)."
        },
    )
    eval_metric: str = field(
        default="acc", metadata={"help": "lm-eval metric the task DCG compares (acc, word_perplexity, ...)."}
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many items per task."})


#: Attention heads of the --train_models Llama models (their head size, hidden size / heads, must be even for RoPE).
_NUM_HEADS = 4


def _validate(args: ComplianceArguments):
    """Check the arguments before any work or write; returns the DCG report of the `--dcg_*` files (or `None`)."""
    from ..compliance.robots import BACKENDS, HOST_FALLBACKS, STATUS_POLICIES
    from ..data.loading import check_dataset_name
    from ..utils.io import ensure_writable_dir

    if args.engine not in ("datasets", "datatrove"):
        raise ValueError(f"--engine must be 'datasets' or 'datatrove', got {args.engine!r}.")
    if args.engine == "datatrove":  # the optional extra, checked before the corpus is loaded
        try:
            from ..compliance import datatrove_filter  # noqa: F401
        except ModuleNotFoundError as err:
            if err.name != "datatrove":
                raise
            raise ValueError(f"--engine datatrove needs datatrove: pip install 'hf_ext[datatrove]' ({err}).") from err
    if args.host_fallback not in HOST_FALLBACKS:
        raise ValueError(f"--host_fallback must be one of {', '.join(HOST_FALLBACKS)}, got {args.host_fallback!r}.")
    if args.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {args.backend!r}.")
    if args.status_policy not in STATUS_POLICIES:
        raise ValueError(f"--status_policy must be one of {', '.join(STATUS_POLICIES)}, got {args.status_policy!r}.")
    if args.user_agents is not None and not all(a.strip() for a in args.user_agents.split(",")):
        raise ValueError(
            f"--user_agents must be a comma-separated list of names, e.g. GPTBot,CCBot; got {args.user_agents!r}."
        )
    if args.user_agents is not None:
        # product tokens: 'GPT Bot' or a full User-Agent header would select another crawler's group
        from ..compliance.rfc9309 import check_user_agents

        check_user_agents([a.strip() for a in args.user_agents.split(",")], "--user_agents")
    _refuse_inapplicable_flags(args)
    if args.train_models:
        for name in ("train_steps", "train_block_size", "train_batch_size", "model_hidden_size", "model_layers"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1 with --train_models, got {getattr(args, name)}.")
        if args.continual_steps < 0:
            raise ValueError(f"--continual_steps must be >= 0 (0 skips continual pretraining), got {args.continual_steps}.")
        if args.train_block_size < 2:
            raise ValueError(
                f"--train_block_size must be >= 2 with --train_models (a model learns to predict each token of a "
                f"block from the ones before it; a block of 1 token has nothing to predict), got {args.train_block_size}."
            )
        if args.model_hidden_size % (2 * _NUM_HEADS):
            raise ValueError(
                f"--model_hidden_size must be a multiple of {2 * _NUM_HEADS} with --train_models: the models have "
                f"{_NUM_HEADS} attention heads of --model_hidden_size / {_NUM_HEADS} dimensions each, which the rotary "
                f"position embedding needs even; got {args.model_hidden_size} (e.g. use "
                f"{max(2 * _NUM_HEADS, args.model_hidden_size - args.model_hidden_size % (2 * _NUM_HEADS))})."
            )
        if not (args.train_learning_rate > 0 and args.train_learning_rate < float("inf")):
            raise ValueError(f"--train_learning_rate must be a positive finite number, got {args.train_learning_rate}.")
        if args.dataset_name or args.train_file:
            raise ValueError("--train_models uses the embedded corpus and its held-out split; drop --dataset_name/--train_file.")
        if args.eval_tasks is not None:
            from ..evaluation.prompting import check_eval_tasks

            if args.eval_limit is not None and args.eval_limit < 1:
                raise ValueError(f"--eval_limit must be >= 1, got {args.eval_limit}.")
            # the names, and --eval_metric against each task, before the models are trained (were first read after
            # training and both lm-eval runs, with the loss-based results already written)
            check_eval_tasks(args.eval_tasks, "--eval_tasks", metric=args.eval_metric)
    elif args.eval_tasks is not None:
        raise ValueError("--eval_tasks evaluates the models trained by --train_models; add --train_models.")
    from ._common import check_vocab_size

    check_vocab_size(args.vocab_size, args.tokenizer_name)  # what build_tokenizer accepts
    for name in ("url_column", "text_column", "split"):
        if not getattr(args, name):
            raise ValueError(f"--{name} must be non-empty.")
    if args.dataset_name is None and args.train_file is None and args.split not in ("train", "test"):
        raise ValueError(
            f"--split {args.split!r}: the embedded corpus (used without --dataset_name / --train_file) has the splits "
            "'train' and 'test'; pass --split train or --split test."
        )
    if args.robots is not None and not os.path.exists(args.robots):
        raise ValueError(f"--robots={args.robots!r} does not exist; pass a snapshot folder, .jsonl or .parquet.")
    if args.robots is not None:
        from pathlib import Path

        from ..compliance.store import _empty_snapshot_message, _infer_format, snapshot_is_empty

        try:  # the format from the extension, before --output_dir is made (the script has no format flag)
            _infer_format(Path(args.robots))
        except ValueError:
            raise ValueError(
                f"--robots={args.robots!r} is neither a folder nor a .jsonl or .parquet file; pass a snapshot in one "
                "of those formats (a file named with its format's extension)."
            ) from None
        if snapshot_is_empty(args.robots):  # (checked cheaply here, before --output_dir is made; load refuses it too)
            raise ValueError(f"--robots: {_empty_snapshot_message(Path(args.robots))}")
    # a path that is not a folder, or a Hub name offline
    check_dataset_name(args.dataset_name, "Use a local folder or --train_file.")
    if args.train_file is not None and not os.path.isfile(args.train_file):
        raise ValueError(f"--train_file={args.train_file!r} is not a file.")
    if args.train_file is not None:
        from ..data.loading import _file_builder

        builder = _file_builder(args.train_file)  # the extension in any letter case (DOCS.JSONL is JSON Lines)
        if builder in (None, "text"):
            # a .txt file is only paragraphs of text: it cannot hold the URL that each document is checked by (it
            # used to reach datasets as a builder named 'txt' and end in "Couldn't reach 'txt' on the Hub")
            raise ValueError(
                f"--train_file={args.train_file!r} "
                + ("is a .txt file, which holds no URLs" if builder else "has an unsupported extension")
                + f"; the compliance recipe checks each document's URL (--url_column {args.url_column!r}): pass a "
                ".json/.jsonl, .csv or .parquet file with that column."
            )
    if isinstance(args.dcg_lower_is_better, str):  # True / FALSE / Auto as the boolean flags take them
        args.dcg_lower_is_better = args.dcg_lower_is_better.strip().lower()
    if args.dcg_lower_is_better not in _LOWER_IS_BETTER_CHOICES:
        raise ValueError(
            f"--dcg_lower_is_better must be one of {', '.join(_LOWER_IS_BETTER_CHOICES)} (true: the scores are losses "
            f"or perplexities), got {args.dcg_lower_is_better!r}."
        )
    if (args.dcg_non_compliant is None) != (args.dcg_compliant is None):
        raise ValueError("--dcg_non_compliant and --dcg_compliant must be given together.")
    for name in ("dcg_non_compliant", "dcg_compliant"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"--{name}={path!r} is not a file.")
    if args.num_proc is not None and args.num_proc < 1:
        raise ValueError("--num_proc must be >= 1.")
    report = _dcg_from_files(args) if args.dcg_non_compliant else None
    ensure_writable_dir(args.output_dir, "--output_dir")
    return report


_LOWER_IS_BETTER_CHOICES = ("auto", "true", "false")

_TRAIN_FLAGS = (
    "train_steps", "continual_steps", "train_block_size", "train_batch_size", "train_learning_rate",
    "model_hidden_size", "model_layers", "seed",
)  # fmt: skip


def _refuse_inapplicable_flags(args: ComplianceArguments) -> None:
    """A flag the run would ignore is an error naming it (the user believes it did something)."""
    from ._common import changed_from_default

    def changed(names):
        return [f"--{n}" for n in changed_from_default(args, names)]

    ignored = [] if args.train_models else changed(_TRAIN_FLAGS)
    if ignored:
        raise ValueError(f"{', '.join(ignored)} set the models of --train_models; add --train_models or drop them.")
    ignored = [] if args.eval_tasks is not None else changed(("eval_metric", "eval_limit"))
    if ignored:
        raise ValueError(f"{', '.join(ignored)} apply to the lm-eval scoring of --eval_tasks; pass it or drop them.")
    dcg_flags = ("dcg_metric", "dcg_absolute", "dcg_lower_is_better")
    ignored = [] if args.dcg_non_compliant is not None else changed(dcg_flags)
    if ignored:
        raise ValueError(
            f"{', '.join(ignored)} apply to the DCG report of --dcg_non_compliant/--dcg_compliant; pass both files "
            "or drop them."
        )
    if args.dataset_config_name and not args.dataset_name:
        raise ValueError("--dataset_config_name is a config of --dataset_name; pass --dataset_name or drop it.")
    from .pretrain import check_ignored_model_flags

    check_ignored_model_flags(args, args)  # --vocab_size beside --tokenizer_name (whose tokenizer is loaded)
    if args.train_models and args.split != "train":
        raise ValueError(
            f"--train_models trains on the embedded corpus' train split and scores on its held-out test split; "
            f"--split {args.split} would train on other data (the test split: the held-out data itself). Drop --split."
        )


def _dcg_from_files(args: ComplianceArguments):
    """The DCG report of `--dcg_non_compliant` vs `--dcg_compliant`, computed before any work or write so that a
    malformed or mismatched file fails first, naming the flag."""
    from ..compliance import compute_dcg
    from ..compliance.dcg import trainer_bookkeeping_keys
    from ..utils.scores import task_scores

    results = {}
    for name in ("dcg_non_compliant", "dcg_compliant"):
        path = getattr(args, name)
        try:
            with open(path, encoding="utf-8") as fh:
                results[name] = json.load(fh)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"--{name}={path!r} is not a JSON results file ({err}).") from None
    for name in ("dcg_non_compliant", "dcg_compliant"):
        keys = trainer_bookkeeping_keys(results[name])
        if keys:  # one evaluation's metrics: each key would be compared (and averaged) as a task
            raise ValueError(
                f"--{name}={getattr(args, name)!r} is a HF Trainer metrics file (eval_results.json or "
                f"trainer.evaluate(): it has the bookkeeping keys {keys}), not scores per task: each of its keys, "
                "epoch and runtime included, would be compared and averaged as a task. Put each file's metrics under "
                'one task name ({"eval": {"eval_loss": ..., ...}}) and pass --dcg_metric eval_loss (or another of its '
                "metrics; a loss or perplexity is compared lower-is-better)."
            )
    full, comp = results["dcg_non_compliant"], results["dcg_compliant"]
    lower = {"auto": None, "true": True, "false": False}[args.dcg_lower_is_better]
    try:
        if lower is None and args.dcg_metric is None:
            # auto: compute_dcg reads the direction from each task's metric key; a task that is a bare score on both
            # sides names no metric, and taking it as higher-is-better gave a loss the opposite sign
            keys = ({}, {})
            task_scores(full, None, "non_compliant", keys=keys[0])
            task_scores(comp, None, "compliant", keys=keys[1])
            bare = sorted(t for t in set(keys[0]) & set(keys[1]) if keys[0][t] is None and keys[1][t] is None)
            if bare:
                shown = ", ".join(bare[:8]) + (f" and {len(bare) - 8} more" if len(bare) > 8 else "")
                raise ValueError(
                    f"tasks {shown} are bare scores ({{task: score}}) on both sides, which name no metric, so whether "
                    "lower is better is unknown; pass --dcg_lower_is_better true for losses or perplexities (e.g. "
                    "the held-out losses of the recipe's dcg_trained.json) or false for accuracies and other "
                    "higher-is-better scores"
                )
        # compute_dcg flips the sign of a loss- or perplexity-like metric itself (`is_lower_is_better`): --dcg_metric
        # as a bare name or as lm-eval's key (`word_perplexity,none`), and without --dcg_metric each task's only one
        return compute_dcg(full, comp, relative=not args.dcg_absolute, metric=args.dcg_metric, lower_is_better=lower)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"--dcg_non_compliant={args.dcg_non_compliant!r} and --dcg_compliant={args.dcg_compliant!r} do not give a "
            f"DCG report: {_as_cli_fix(str(err))}"
        ) from None


# The fixes `compute_dcg` names as its Python arguments, said with this script's flags (`tasks=` and `undefined=` have
# none: the files are compared whole)
_CLI_FIXES = (
    ("pass tasks=[...] to compare a common subset", "give both files the same tasks"),
    ("or leave this task out (tasks=[...])", "or remove this task from both files"),
    ("or compare without this task (tasks=[...])", "or remove this task from both files"),
    (
        "use relative=False, or undefined='nan' to report those tasks as n/a",
        "pass --dcg_absolute for absolute gaps, or remove those tasks from both files",
    ),
    ("pass a metric it reports as metric=", "pass a metric it reports as --dcg_metric"),
    ("pass metric=<name>", "pass --dcg_metric <name>"),
    (
        "pass lower_is_better=[...] naming the lower-is-better tasks (True / False: all)",
        "pass --dcg_lower_is_better true or false (for all tasks)",
    ),
    ("(metric= naming a key both report, e.g. metric=", "(--dcg_metric naming a key both report, e.g. --dcg_metric "),
)


def _as_cli_fix(message: str) -> str:
    """`message` of `compute_dcg` with the fix it names given as this script's flags instead of Python arguments."""
    for python, flag in _CLI_FIXES:
        message = message.replace(python, flag)
    return message


def _load_dataset(args: ComplianceArguments):
    """The `--split` of `--dataset_name` (a Hub dataset, a folder of data files or a `save_to_disk` folder; one saved
    `Dataset` is the data whatever `--split`), the `--train_file`, or the embedded corpus' split. Through the shared
    loaders of `hf_ext.data.loading`: the file's extension in any letter case, and a file or dataset that does not
    load raises a `ValueError` naming the flag."""
    from ..data import load_corpus
    from ..data.loading import load_data_file, load_dataset_or_folder

    if args.train_file:
        return load_data_file(args.train_file, args.split, flag="--train_file")
    if args.dataset_name:
        return load_dataset_or_folder(args.dataset_name, args.dataset_config_name, split=args.split)
    return load_corpus(args.split)


def _plot(stats, path: str) -> None:
    import matplotlib

    from ..utils.io import atomic_savefig

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = stats.per_domain[:30]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    names = [r["domain"] for r in rows][::-1]
    ax.barh(names, [r["tokens_removed_pct"] for r in rows][::-1], label="tokens removed")
    ax.barh(names, [r["docs_removed_pct"] for r in rows][::-1], height=0.35, label="documents removed")
    ax.set_xlabel("% removed by robots.txt opt-outs")
    ax.set_title(f"overall: {stats.overall['tokens_removed_pct']:.1f}% tokens, {stats.overall['docs_removed_pct']:.1f}% docs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _save_dataset_atomically(dataset, path: str) -> None:
    """`save_to_disk` into a temporary folder beside `path`, then swap it in: a crash never leaves a torn dataset."""
    import shutil

    from ..utils import make_temp_dir

    parent = os.path.dirname(os.path.abspath(path))
    tmp = make_temp_dir(parent, ".compliant_dataset.")
    try:
        dataset.save_to_disk(tmp)
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fetch_date_range(store) -> dict:
    """The snapshot's fetch dates as a range: `earliest` and `latest` (the dates as recorded, compared as instants:
    offsets applied, a date or a time without offset counting as UTC; `None` when no host has an ISO 8601 date),
    `hosts_without_date` and `hosts_with_unparsed_date` (a date that is not ISO 8601, left out of the range). A
    fetcher stamps each host to the second, so listing every date would grow with the snapshot (one line of
    megabytes for millions of hosts)."""
    from ..compliance.store import _as_utc

    earliest = latest = None
    without = unparsed = 0
    for record in store.values():
        if not record.fetched_at:
            without += 1
            continue
        instant = _as_utc(record.fetched_at)
        if instant is None:
            unparsed += 1
            continue
        if earliest is None or instant < earliest[0]:
            earliest = (instant, record.fetched_at)
        if latest is None or instant > latest[0]:
            latest = (instant, record.fetched_at)
    return {
        "earliest": None if earliest is None else earliest[1],
        "latest": None if latest is None else latest[1],
        "hosts_without_date": without,
        "hosts_with_unparsed_date": unparsed,
    }


def _fetch_dates_text(dates: dict) -> str:
    """One short phrase for `_fetch_date_range`'s result, e.g. `fetched 2025-01-10T00:00:00+00:00 ..
    2025-01-10T00:49:59+00:00 (3 hosts without a date)`."""
    if dates["earliest"] is None:
        text = "fetched at unknown dates"
    elif dates["earliest"] == dates["latest"]:
        text = f"fetched {dates['earliest']}"
    else:
        text = f"fetched {dates['earliest']} .. {dates['latest']}"
    notes = []
    without, unparsed = dates["hosts_without_date"], dates["hosts_with_unparsed_date"]
    if dates["earliest"] is not None and without:
        notes.append(f"{without} host{'s' * (without != 1)} without a date")
    if unparsed:
        notes.append(f"{unparsed} host{'s' * (unparsed != 1)} with a date that is not ISO 8601")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _run_settings(store, agents, args: ComplianceArguments) -> dict:
    """What a retention result depends on besides the corpus: the robots.txt snapshot (with the range of its fetch
    dates, `_fetch_date_range`) and the decision settings. Recorded with every result (the snapshot date matters:
    opt-outs change over time)."""
    return {
        "robots_snapshot": {
            "path": args.robots or "example snapshot (hf_ext.compliance.load_example_robots)",
            "hosts": len(store),
            "fetched_at": _fetch_date_range(store),
        },
        "user_agents": list(agents),
        "backend": args.backend,
        "status_policy": args.status_policy,
        "host_fallback": args.host_fallback,
    }


def _settings_markdown(settings: dict) -> str:
    snapshot = settings["robots_snapshot"]
    return "\n".join(
        [
            f"- robots.txt snapshot: {snapshot['path']} ({snapshot['hosts']} hosts), "
            f"{_fetch_dates_text(snapshot['fetched_at'])}",
            f"- checked agents: {', '.join(settings['user_agents'])}",
            f"- backend: {settings['backend']}, status policy: {settings['status_policy']}, "
            f"host fallback: {settings['host_fallback']}",
        ]
    )


# The report files a run writes into --output_dir (a rerun removes an earlier run's before it starts; an earlier
# run's saved compliant dataset is moved aside then, see `_set_aside_previous_dataset`).
RESULT_FILES = (
    "retention_stats.json", "retention_stats.md", "retention_by_domain.png", "dcg.json", "dcg_trained.json",
    "dcg_trained.md", "dcg_trained.png",
)  # fmt: skip


DATASET_DIR = "compliant_dataset"
PREVIOUS_DATASET_DIR = "compliant_dataset.previous"


def _remove_path(path: str) -> None:
    """Remove a folder (a link to one: the link only) or a file at `path`, if any."""
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _set_aside_previous_dataset(output_dir: str) -> str | None:
    """Move an earlier run's `compliant_dataset/` to `compliant_dataset.previous/` (replacing an older one there), as
    the earlier run's report files are removed: left in place it would look like the dataset this run's
    `retention_stats.json` describes (another snapshot or agent list). It is data, not a report, so it is kept under a
    name that says it is not current rather than removed (a run with --save_filtered removes it once its own dataset
    is saved: that option replaces the dataset). Returns the new path, or `None` when there was none."""
    path = os.path.join(output_dir, DATASET_DIR)
    if not os.path.lexists(path):
        return None
    previous = os.path.join(output_dir, PREVIOUS_DATASET_DIR)
    _remove_path(previous)
    os.replace(path, previous)
    print(
        f"moved the compliant dataset of an earlier run to {previous} (it is not this run's; "
        "--save_filtered writes this run's)",
        flush=True,
    )
    return previous


def run(args: ComplianceArguments) -> dict:
    """Filter the corpus and write the reports (see the module docstring). A run refused on its inputs (a snapshot,
    a column, the training blocks, ...) leaves no `--output_dir` it created: the writability check makes the folder
    before the dataset's columns are known, and a wrong `--url_column` left it behind, empty."""
    created = []  # the folders the writability check will create, leaf first
    folder = os.path.abspath(args.output_dir) if args.output_dir else None
    while folder and not os.path.lexists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        return _run(args)
    except BaseException:
        for folder in created:
            try:
                os.rmdir(folder)  # only an empty folder: anything this run wrote stays
            except OSError:
                break
        raise


def _run(args: ComplianceArguments) -> dict:
    from ..compliance import (
        DEFAULT_AI_USER_AGENTS,
        RobotsCompliance,
        RobotsTxtStore,
        annotate_compliance,
        compute_retention_stats,
        load_example_robots,
    )
    from ..utils.io import atomic_write_results, atomic_write_text

    report = _validate(args)
    from ._common import clear_previous_results

    # Every check (snapshot, checker options, dataset columns, the --train_models blocks) runs before the previous
    # run's results are removed, just before this run writes its first file: a run that fails on its inputs leaves the
    # earlier results in place.
    try:  # a snapshot of no host is refused in every format (it would remove nothing)
        store = RobotsTxtStore.load(args.robots) if args.robots else load_example_robots()
    except (TypeError, ValueError) as err:  # a bad record's field is a TypeError
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"--robots: {err}") from None
    agents = [a.strip() for a in args.user_agents.split(",")] if args.user_agents else list(DEFAULT_AI_USER_AGENTS)
    checker = RobotsCompliance(
        store,
        user_agents=agents,
        host_fallback=args.host_fallback,
        backend=args.backend,
        status_policy=args.status_policy,
    )
    dataset = _load_dataset(args)
    if args.url_column not in dataset.column_names:
        raise ValueError(f"--url_column={args.url_column!r} is not a column (columns: {dataset.column_names}).")
    if args.text_column not in dataset.column_names:
        raise ValueError(f"--text_column={args.text_column!r} is not a column (columns: {dataset.column_names}).")
    if args.domain_column is not None and args.domain_column not in dataset.column_names:
        raise ValueError(f"--domain_column={args.domain_column!r} is not a column (columns: {dataset.column_names}).")
    from ..compliance.dataset_ops import _check_inputs

    _check_inputs(dataset, checker, args.url_column, args.num_proc, 1000)  # e.g. a URL column that holds no strings
    if args.tokenizer_name:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    else:
        from ..data import build_tokenizer

        tokenizer = build_tokenizer(args.vocab_size)

    if args.engine == "datasets":
        annotated = annotate_compliance(dataset, checker, url_column=args.url_column, num_proc=args.num_proc)
    else:
        annotated = _annotate_with_datatrove(dataset, checker, args)

    domain_column = args.domain_column or ("domain" if "domain" in dataset.column_names else None)
    stats = compute_retention_stats(
        annotated, domain_column=domain_column, url_column=args.url_column, text_column=args.text_column,
        tokenizer=tokenizer, num_proc=args.num_proc,
    )
    settings = _run_settings(store, agents, args)
    # the training blocks of --train_models (too few for a --train_block_size is refused here, before any write)
    dcg_data = _dcg_data(annotated, tokenizer, args) if args.train_models else None
    clear_previous_results(args.output_dir, RESULT_FILES)
    _set_aside_previous_dataset(args.output_dir)
    dates = settings["robots_snapshot"]["fetched_at"]
    status_counts = store.status_counts()
    print(f"robots.txt snapshot: {len(store)} hosts, {_fetch_dates_text(dates)}")
    print("hosts per status class: " + ", ".join(f"{k} {v}" for k, v in status_counts.items()))
    print(f"checked agents: {', '.join(agents)} (backend {args.backend}, status policy {args.status_policy})")
    print(stats.to_table())
    result = stats.to_dict()
    result["host_status_classes"] = status_counts
    result.update(settings)
    # Results first, each file written atomically; the optional plot and dataset come after.
    atomic_write_results(os.path.join(args.output_dir, "retention_stats.json"), result)
    markdown = _settings_markdown(settings) + "\n\n" + stats.to_table() + "\n"
    atomic_write_text(os.path.join(args.output_dir, "retention_stats.md"), markdown)
    _plot(stats, os.path.join(args.output_dir, "retention_by_domain.png"))
    if args.save_filtered:
        kept = annotated.filter(lambda ok: ok, input_columns="robots_compliant")
        _save_dataset_atomically(kept, os.path.join(args.output_dir, DATASET_DIR))
        # replaced, as --save_filtered asks (as it replaced the dataset before 2026-12-04): no earlier one is kept
        _remove_path(os.path.join(args.output_dir, PREVIOUS_DATASET_DIR))
    if report is not None:
        print("\nData compliance gap (positive = the compliant model is worse):")
        print(report.to_table())
        result["dcg"] = report.to_dict()
        atomic_write_results(os.path.join(args.output_dir, "dcg.json"), result["dcg"])
    if args.train_models:
        result["dcg_trained"] = train_and_measure_dcg(annotated, tokenizer, args, dcg_data)
    print(f"saved statistics to {args.output_dir}")
    return result


def _train_lm(model, blocks, steps: int, args: ComplianceArguments, folder: str):
    """Train `model` on packed `blocks` for `steps` steps with `Trainer` (cosine schedule, no checkpoints)."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    targs = TrainingArguments(
        output_dir=folder, max_steps=steps, per_device_train_batch_size=args.train_batch_size,
        learning_rate=args.train_learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.1,
        save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=max(steps, 1), seed=args.seed,
        use_cpu=True, dataloader_drop_last=True,
    )  # fmt: skip
    Trainer(model=model, args=targs, train_dataset=blocks, data_collator=default_data_collator).train()
    return model


def _domain_losses(model, eval_sets: dict) -> dict[str, float]:
    from ..utils.evaluation import causal_lm_eval_loss

    return {name: causal_lm_eval_loss(model, ds, 32) for name, ds in eval_sets.items()}


def _dcg_data(annotated, tokenizer, args: ComplianceArguments) -> tuple[dict, dict]:
    """The packed training blocks (`compliant`, `full`, and `non_compliant` with --continual_steps) and held-out
    evaluation sets (`ALL` and one per domain) of `train_and_measure_dcg`; refuses a split too small for one batch,
    naming the flags."""
    from ..data import load_corpus, pack_dataset

    if args.dataset_name or args.train_file:
        raise ValueError("--train_models uses the embedded corpus and its held-out split; drop --dataset_name/--train_file.")
    text = args.text_column
    parts = {
        "compliant": annotated.filter(lambda ok: ok, input_columns="robots_compliant"),
        "non_compliant": annotated.filter(lambda ok: not ok, input_columns="robots_compliant"),
        "full": annotated,
    }
    if not args.continual_steps:  # only continual pretraining trains on it
        del parts["non_compliant"]
    blocks = {k: pack_dataset(v.select_columns([text]), tokenizer, args.train_block_size, text) for k, v in parts.items()}
    for name, ds in blocks.items():  # (without continual pretraining a snapshot that removes nothing is fine)
        if len(ds) < args.train_batch_size:
            raise ValueError(
                f"The {name} data forms only {len(ds)} blocks of --train_block_size {args.train_block_size} tokens, "
                f"fewer than one batch (--train_batch_size {args.train_batch_size}); lower --train_block_size or "
                "--train_batch_size."
            )
    held_out = load_corpus("test")
    eval_sets = {"ALL": pack_dataset(held_out.select_columns([text]), tokenizer, args.train_block_size, text)}
    for domain in sorted(set(held_out["domain"])):
        docs = held_out.filter(lambda d, want=domain: d == want, input_columns="domain").select_columns([text])
        packed = pack_dataset(docs, tokenizer, args.train_block_size, text)
        if len(packed):
            eval_sets[domain] = packed
    return blocks, eval_sets


def train_and_measure_dcg(annotated, tokenizer, args: ComplianceArguments, data: tuple | None = None) -> dict:
    """The paper's two DCG settings at small scale; returns per-domain held-out losses and both DCG reports.

    Scores are held-out next-token losses per domain of the embedded corpus' test split (lower is better, so a
    positive DCG means the compliant model is worse). Both from-scratch models see the same number of tokens
    (`train_steps x train_batch_size x train_block_size`): the smaller compliant set is repeated more often. `data` is
    what `_dcg_data` returns for these arguments (built here when not given).
    """
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    from ..compliance import compute_dcg
    from ..utils.io import atomic_write_results, atomic_write_text

    blocks, eval_sets = data if data is not None else _dcg_data(annotated, tokenizer, args)

    def fresh():
        set_seed(args.seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=args.model_hidden_size, intermediate_size=3 * args.model_hidden_size,
            num_hidden_layers=args.model_layers, num_attention_heads=_NUM_HEADS, num_key_value_heads=_NUM_HEADS,
            max_position_embeddings=4 * args.train_block_size, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        return LlamaForCausalLM(config)

    work = os.path.join(args.output_dir, "dcg_runs")
    torch.manual_seed(args.seed)
    models = {
        "full": _train_lm(fresh(), blocks["full"], args.train_steps, args, os.path.join(work, "full")),
        "compliant": _train_lm(fresh(), blocks["compliant"], args.train_steps, args, os.path.join(work, "compliant")),
    }
    losses = {name: _domain_losses(m, eval_sets) for name, m in models.items()}
    if args.continual_steps > 0:
        models["full_continued"] = _train_lm(
            copy.deepcopy(models["full"]), blocks["full"], args.continual_steps, args, os.path.join(work, "fc")
        )
        models["compliant_continued"] = _train_lm(
            copy.deepcopy(models["compliant"]), blocks["non_compliant"], args.continual_steps, args,
            os.path.join(work, "cc"),
        )  # fmt: skip
        for name in ("full_continued", "compliant_continued"):
            losses[name] = _domain_losses(models[name], eval_sets)
    tasks = list(eval_sets)
    domains = [t for t in tasks if t != "ALL"]

    def domain_dcg(full, compliant):
        """Per-domain rows and the overall (`ALL`) row; the mean is over the domains only (`ALL` is their union, so
        averaging it in would count the held-out data twice)."""
        report = compute_dcg(full, compliant, lower_is_better=tasks)
        if domains:
            mean = compute_dcg(full, compliant, lower_is_better=domains, tasks=domains).mean_gap
            report = dataclasses.replace(report, mean_gap=mean)
        return report

    scratch = domain_dcg(losses["full"], losses["compliant"])
    out = {"losses": losses, "scratch": scratch.to_dict(), "tokens_per_model": args.train_steps * args.train_batch_size
           * args.train_block_size}  # fmt: skip
    tables = ["## (a) from scratch, same token budget", "", scratch.to_table()]
    if args.continual_steps > 0:
        continual = domain_dcg(losses["full_continued"], losses["compliant_continued"])
        out["continual"] = continual.to_dict()
        tables += ["", "## (b) continual pretraining on the non-compliant remainder", "", continual.to_table()]
    print("\nData compliance gap measured by training (held-out loss per domain; positive = compliant is worse):")
    print("\n".join(tables) + "\n")
    # the trained models' gaps are on disk before the optional lm-eval step (which may take long or fail)
    atomic_write_results(os.path.join(args.output_dir, "dcg_trained.json"), out)
    atomic_write_text(os.path.join(args.output_dir, "dcg_trained.md"), "\n".join(tables) + "\n")
    if args.eval_tasks:
        from ..evaluation.uses import compliance_gap

        tasks = [t.strip() for t in args.eval_tasks.split(",")]
        pairs = [("scratch", "full", "compliant")]
        if args.continual_steps > 0:
            pairs.append(("continual", "full_continued", "compliant_continued"))
        for key, full_name, comp_name in pairs:
            report = compliance_gap(
                models[full_name], models[comp_name], tokenizer, tasks=tasks, metric=args.eval_metric,
                limit=args.eval_limit, num_fewshot=0, undefined="nan",
            )  # fmt: skip
            out[f"{key}_tasks"] = report.to_dict()
            section = [f"## {key}: lm-eval tasks ({args.eval_metric})", "", report.to_table()]
            if any(r["gap"] is None for r in out[f"{key}_tasks"]["rows"]):
                section += ["", "n/a: the full model scores 0 on the task, so a relative gap is undefined."]
            tables += ["", *section]
            print("\n".join(section) + "\n")
        atomic_write_results(os.path.join(args.output_dir, "dcg_trained.json"), out)
        atomic_write_text(os.path.join(args.output_dir, "dcg_trained.md"), "\n".join(tables) + "\n")
    _plot_dcg(out, os.path.join(args.output_dir, "dcg_trained.png"))
    return out


def _plot_dcg(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.io import atomic_savefig

    settings = [k for k in ("scratch", "continual") if k in out]
    tasks = [r["task"] for r in out["scratch"]["rows"]]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(settings)
    for i, key in enumerate(settings):
        gaps = {r["task"]: r["gap"] for r in out[key]["rows"]}
        ax.bar([j + i * width for j in range(len(tasks))], [gaps[t] for t in tasks], width, label=key)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([j + width * (len(settings) - 1) / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right")
    ax.set_ylabel("DCG (% held-out loss)")
    ax.set_title("Data compliance gap per domain (positive: the compliant model is worse)")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _annotate_with_datatrove(dataset, checker, args: ComplianceArguments):
    """Run the datatrove step in-process over the dataset and turn its decisions into the same columns."""
    from datatrove.data import Document

    from ..compliance import RobotsTxtFilter

    step = RobotsTxtFilter(checker, url_key="url", batch_size=1000)
    # read in batches of the two columns: iterating a Dataset formats one whole row at a time (20,000 rows: 4.6 s)
    columns = list(dict.fromkeys((args.text_column, args.url_column)))
    pairs = (
        pair
        for batch in dataset.select_columns(columns).with_format(None).iter(batch_size=1000)
        for pair in zip(batch[args.text_column], batch[args.url_column])
    )
    docs = [Document(text=text or "", id=str(i), metadata={"url": url}) for i, (text, url) in enumerate(pairs)]
    kept = {int(doc.id) for doc in step.run(iter(docs))}
    flags = [i in kept for i in range(len(docs))]
    agents = [list(doc.metadata.get("disallowed_user_agents", [])) for doc in docs]
    # Columns of an earlier annotation are replaced, as annotate_compliance (--engine datasets) replaces them.
    import datasets

    names = ("robots_compliant", "disallowed_user_agents")
    dataset = dataset.remove_columns([n for n in names if n in dataset.column_names])
    return dataset.add_column("robots_compliant", flags, feature=datasets.Value("bool")).add_column(
        "disallowed_user_agents", agents, feature=datasets.List(datasets.Value("string"))
    )


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args, refuse_multiple_processes

    refuse_multiple_processes(
        "compliance",
        "every process would filter the whole dataset and write the same files, and --train_models would train "
        "data-parallel on --train_batch_size blocks per process (not per step), so its DCG would differ from one "
        "process",
        "to filter faster use --num_proc (datasets workers), or for a crawl-scale corpus run RobotsTxtFilter in a "
        "datatrove pipeline under datatrove's LocalPipelineExecutor/SlurmPipelineExecutor (docs/compliance.md; "
        "--engine datatrove in this script runs the step in one process)",
    )
    (args,) = parse_recipe_args((ComplianceArguments,), argv)
    return finish(run(args))


if __name__ == "__main__":
    main()
