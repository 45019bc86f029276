"""GRAPE data-mixture reweighting (or DoGE/DoReMi/uniform/fixed) over source domains for several target tasks.

Run as `python scripts/grape.py`, `accelerate launch scripts/grape.py` or `hf-ext run grape`. With no arguments the
sources are the embedded corpus domains and two target tasks are built from its held-out split; a tiny Llama is
trained from its config. Prints the final domain and task weights, writes `mixture.json` (train a fresh model on it
with `--reweight_method fixed --mixture_file <output_dir>/mixture.json`), `mixture_weights.png` and per-target losses.

`--compare_methods grape,uniform,doge,doremi` trains one model per method (same initialisation, data and budget) in
`<output_dir>/<method>/` and compares them; `--eval_tasks hf_ext_domain,hf_ext_cloze` adds target-task accuracy from
lm-evaluation-harness, with the packaged tasks restricted to each target's domains. Both write `target_eval.json` and
the Markdown table `target_eval.md` (one row per trained method).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields

from ..grape.configuration_grape import REWEIGHT_METHODS, GrapeConfig
from ..utils.io import atomic_write_results

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = "io_network=networking+filesystem,language_numeric=language+numeric+datatypes"
#: lm-eval metrics shown in the Markdown table (every metric is in `target_eval.json`).
TABLE_METRICS = ("acc", "acc_norm", "exact_match")


@dataclass
class GrapeDataArguments:
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local .json/.jsonl/.csv/.parquet file with a text column and a domain column (sources)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset or local dataset folder with text + domain columns (sources)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    target_files: str | None = field(
        default=None,
        metadata={"help": "Target tasks as 'name=path,name=path' (local text files or json/jsonl/csv/parquet)."},
    )
    target_domains: str = field(
        default=DEFAULT_TARGETS,
        metadata={
            "help": "Without --target_files: target tasks built from the embedded corpus' held-out split, as "
            "'name=domain+domain,...'."
        },
    )
    source_domains: str | None = field(
        default=None, metadata={"help": "Comma-separated subset of source domains (default: all)."}
    )
    eval_fraction: float = field(
        default=0.5, metadata={"help": "Fraction of each target's blocks kept for evaluation (not used to reweight)."}
    )
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to load instead of building one."})


@dataclass
class GrapeModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this pretrained causal LM instead of a fresh tiny Llama."}
    )
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of a fresh model."})
    intermediate_size: int = field(default=192, metadata={"help": "MLP width of a fresh model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of a fresh model."})


@dataclass
class GrapeEvalArguments:
    compare_methods: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated mixture methods to train and compare, e.g. 'grape,uniform,doge,doremi': one model "
            "per method from the same initialisation, data and step budget, each in <output_dir>/<method>/ "
            "(doremi uses the uniform model as its reference unless --reference_model_name_or_path is given). "
            "Default: train --reweight_method only."
        },
    )
    eval_tasks: str | None = field(
        default=None,
        metadata={
            "help": "lm-evaluation-harness tasks to score every trained model on (needs the eval extra), e.g. "
            "hf_ext_domain,hf_ext_cloze (packaged, offline). With embedded-corpus targets the packaged tasks are "
            "also scored on each target's domains only (target-task accuracy); other tasks run on all items."
        },
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "Score at most this many items per task and target."}
    )
    eval_num_fewshot: int = field(default=0, metadata={"help": "Few-shot examples per lm-eval prompt."})


@dataclass
class GrapeRecipeConfig(GrapeConfig):
    # not a field: tells the shared --max_steps / --num_train_epochs checks that this recipe has no epoch-based runs
    epoch_based_runs = False
    output_dir: str = field(default="outputs/grape", metadata={"help": "Where checkpoints and outputs go."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device per step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (int) or fraction of max_steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    block_size: int = field(default=64, metadata={"help": "Tokens per block."})
    reweight_domains_every: int = field(default=20, metadata={"help": "Update domain weights every N steps."})
    reweight_tasks_every: int = field(default=20, metadata={"help": "Update task weights every N steps."})
    domain_step_size: float = field(
        default=20.0,
        metadata={
            "help": "mu_train. Larger than the paper's 1.5 because this demo makes ~10 updates instead of hundreds."
        },
    )
    task_step_size: float = field(
        default=20.0, metadata={"help": "mu_tgt. Larger than the paper's 5 for the same reason."}
    )
    logging_steps: int = field(default=20, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})


def _parse_pairs(text: str, arg: str) -> dict[str, str]:
    out = {}
    for item in [t for t in text.split(",") if t.strip()]:
        if "=" not in item:
            raise ValueError(f"{arg} item {item!r} is not name=value.")
        name, value = item.split("=", 1)
        if not name.strip() or not value.strip():
            raise ValueError(f"{arg} item {item!r} needs a non-empty name and value.")
        if name.strip() in out:
            raise ValueError(
                f"{arg} names the target task {name.strip()!r} twice ({out[name.strip()]!r} and {value.strip()!r}); "
                "give each task a distinct name (or join a task's domains with '+')."
            )
        out[name.strip()] = value.strip()
    if not out:
        raise ValueError(f"{arg} must name at least one target task.")
    return out


def _methods(eval_args: GrapeEvalArguments | None, args: GrapeRecipeConfig) -> list[str]:
    """The methods a run trains, in training order (uniform before doremi, which may use it as reference)."""
    if eval_args is None or eval_args.compare_methods is None:
        return [args.reweight_method]
    methods = [m.strip() for m in eval_args.compare_methods.split(",")]
    return sorted(methods, key=lambda m: m == "doremi")


def _eval_task_list(eval_args: GrapeEvalArguments | None) -> list[str]:
    if eval_args is None or eval_args.eval_tasks is None:
        return []
    return [t.strip() for t in eval_args.eval_tasks.split(",")]


def _validate_eval_args(eval_args: GrapeEvalArguments, args: GrapeRecipeConfig) -> None:
    if eval_args.compare_methods is not None:
        methods = [m.strip() for m in eval_args.compare_methods.split(",")]
        if not all(methods):
            raise ValueError(
                f"--compare_methods must be comma-separated method names, e.g. grape,uniform,doge; got "
                f"{eval_args.compare_methods!r}."
            )
        unknown = [m for m in methods if m not in REWEIGHT_METHODS]
        if unknown:
            raise ValueError(f"--compare_methods has unknown methods {unknown}; use some of {list(REWEIGHT_METHODS)}.")
        if len(set(methods)) != len(methods):
            raise ValueError(f"--compare_methods lists a method twice: {eval_args.compare_methods!r}.")
        if "doremi" in methods and "uniform" not in methods and not args.reference_model_name_or_path:
            raise ValueError(
                "--compare_methods with doremi needs a reference model: add uniform to the list (its model becomes "
                "the reference) or pass --reference_model_name_or_path."
            )
        if "fixed" in methods and not args.mixture_file:
            raise ValueError("--compare_methods with fixed needs --mixture_file (the weights to hold fixed).")
        if args.mixture_file:
            # each method's trainer reads --mixture_file when it is built: a file that an earlier method of the
            # comparison overwrites (its own mixture.json) gave the later methods that run's mixture, not the file's
            order = _methods(eval_args, args)
            given = os.path.realpath(args.mixture_file)
            for i, writer in enumerate(order):
                readers = [m for m in order[i + 1 :] if m != "uniform"]
                written = os.path.join(args.output_dir, writer, args.export_mixture_file)
                if readers and os.path.realpath(written) == given:
                    raise ValueError(
                        f"--mixture_file {args.mixture_file!r} is the mixture file this comparison's {writer} run "
                        f"writes, and {', '.join(readers)} (trained after it) would read {writer}'s new mixture "
                        "instead of this file's weights; copy the file out of --output_dir first (or use another "
                        "--output_dir)."
                    )
        if args.resume_from_checkpoint:
            raise ValueError(
                "--resume_from_checkpoint is not supported with --compare_methods; resume one method with "
                "--reweight_method <m> --output_dir <output_dir>/<m>."
            )
    if eval_args.eval_limit is not None and eval_args.eval_limit < 1:
        raise ValueError(f"--eval_limit must be >= 1 (items per task), got {eval_args.eval_limit}.")
    if eval_args.eval_num_fewshot < 0:
        raise ValueError(f"--eval_num_fewshot must be >= 0, got {eval_args.eval_num_fewshot}.")
    if eval_args.eval_tasks is not None:  # lm-eval installed, names known (the recipe reports every table metric)
        from ..evaluation.harness import check_fewshot_pool
        from ..evaluation.prompting import check_eval_tasks

        names = check_eval_tasks(eval_args.eval_tasks, "--eval_tasks")
        check_fewshot_pool(names, [eval_args.eval_num_fewshot], "--eval_num_fewshot")


def _refuse_inapplicable_flags(
    data_args: GrapeDataArguments, args: GrapeRecipeConfig, eval_args: GrapeEvalArguments | None
) -> None:
    """A flag the run would ignore is an error naming it: the user believes it did something."""
    methods = _methods(eval_args, args)
    comparing = eval_args is not None and eval_args.compare_methods is not None
    if comparing and args.reweight_method != "grape":
        raise ValueError(
            f"--reweight_method {args.reweight_method} is not used with --compare_methods (which names the methods to "
            "train); list it in --compare_methods or drop --compare_methods."
        )
    if args.mixture_key != "final" and not args.mixture_file:
        raise ValueError(f"--mixture_key {args.mixture_key} selects weights of --mixture_file; pass --mixture_file.")
    if args.mixture_file and methods == ["uniform"]:
        raise ValueError(
            "--reweight_method uniform with --mixture_file would train on the file's weights, not uniform ones; use "
            "--reweight_method fixed to train on a mixture file, or drop --mixture_file."
        )
    if args.reference_model_name_or_path and "doremi" not in methods:
        raise ValueError(
            "--reference_model_name_or_path is DoReMi's reference model and is not used by "
            f"{', '.join(methods)}; drop it or train doremi."
        )
    # A single doremi / fixed run needs its reference model / weights (--compare_methods checks its own list): the
    # trainer refused them only after the tokenizer and the data, when the earlier run's results were already cleared.
    if not comparing and methods == ["doremi"] and not args.reference_model_name_or_path:
        raise ValueError(
            "--reweight_method doremi needs a reference model: pass --reference_model_name_or_path (a model trained "
            "first with --reweight_method uniform on the same tokenizer), or compare with --compare_methods "
            "uniform,doremi (the uniform model becomes the reference)."
        )
    if not comparing and methods == ["fixed"] and not args.mixture_file:
        raise ValueError(
            "--reweight_method fixed needs --mixture_file (the weights to hold fixed, e.g. the mixture.json of a "
            "grape run)."
        )
    _refuse_unsupported_training_setup(args, methods)
    _refuse_colliding_output_names(args)
    _refuse_unread_flags(data_args, args, methods)
    if args.reference_model_name_or_path:
        from ._common import check_model_reference

        # a missing folder failed late with a bare hub OSError naming no flag
        check_model_reference(args.reference_model_name_or_path, "--reference_model_name_or_path")
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    if strategy != "no":
        raise ValueError(
            f"--eval_strategy {strategy} needs an eval_dataset, which the recipe does not give GrapeTrainer (it "
            "reports the held-out target loss after training); drop the flag."
        )
    if data_args.dataset_config_name and not data_args.dataset_name:
        raise ValueError("--dataset_config_name is a config of --dataset_name; pass --dataset_name or drop it.")
    own = [f for f in ("target_files", "train_file", "dataset_name") if getattr(data_args, f)]
    if own and data_args.target_domains != DEFAULT_TARGETS:
        raise ValueError(
            f"--target_domains builds targets from the embedded corpus and is not used with --{own[0]}; pass the "
            "targets as --target_files name=path,... instead."
        )
    if eval_args is not None and eval_args.eval_tasks is None:
        if eval_args.eval_limit is not None or eval_args.eval_num_fewshot != 0:
            flag = "--eval_limit" if eval_args.eval_limit is not None else "--eval_num_fewshot"
            raise ValueError(f"{flag} applies to the lm-eval scoring of --eval_tasks; pass --eval_tasks or drop it.")


#: Files the recipe or `save_model` writes into --output_dir (or a compared method's folder) besides the mixture and
#: the plot; `*.safetensors` / `*.bin` shards and their index files too (see `_refuse_colliding_output_names`).
OWN_OUTPUT_FILES = (
    "grape_results.json", "target_eval.json", "target_eval.md", "target_eval.png", "config.json",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "training_args.bin", "grape_run.json",
)  # fmt: skip


#: The reweighting flags read by some methods only, and the methods that read them.
_FLAG_READERS = {
    "domain_step_size": ("grape", "grape_ema", "grape_gap", "doge"),
    "domain_smoothing": ("grape", "grape_ema", "grape_gap", "doge"),
    "step_size_convention": ("grape", "grape_ema", "grape_gap", "doge"),
    "task_step_size": ("grape", "grape_ema", "grape_gap"),
    "task_smoothing": ("grape", "grape_ema", "grape_gap"),
    "ema_beta": ("grape_ema",),
    "doremi_eta": ("doremi",),
    "doremi_smoothing": ("doremi",),
    # the update cadences and the reweighting batch sizes (GrapeTrainer._maybe_reweight / _task_step / _domain_step /
    # _averaged_gradient): doremi's domain step draws mini-batches only, doge has no task step
    "reweight_tasks_every": ("grape", "grape_ema", "grape_gap"),
    "reweight_domains_every": ("grape", "grape_ema", "grape_gap", "doge", "doremi"),
    "reweight_batch_size": ("grape", "grape_ema", "grape_gap", "doge"),
    "reweight_mini_batch_size": ("grape", "grape_ema", "grape_gap", "doge", "doremi"),
}


def _refuse_unread_flags(data_args: GrapeDataArguments, args: GrapeRecipeConfig, methods: list[str]) -> None:
    """A step-size / smoothing / EMA / DoReMi / cadence / reweighting-batch flag set away from its default that none
    of the run's methods reads (e.g. `--reweight_method uniform --domain_step_size 3`, doge's never-updated tasks with
    `--task_step_size` or `--reweight_tasks_every`, doremi with `--reweight_batch_size`) was accepted without a word;
    so was `--eval_fraction` with no target tasks to split."""
    from ._common import changed_from_default

    default_batch = next(f.default for f in fields(args) if f.name == "reweight_batch_size")
    for name in changed_from_default(args, _FLAG_READERS):
        readers = _FLAG_READERS[name]
        # doremi reads --reweight_mini_batch_size, which must divide --reweight_batch_size: a mini-batch the default
        # batch is no multiple of (e.g. 32) needs --reweight_batch_size set beside it, unread as it is by doremi
        needed = (
            name == "reweight_batch_size" and "doremi" in methods and default_batch % args.reweight_mini_batch_size
        )
        if not needed and not set(readers) & set(methods):
            raise ValueError(
                f"--{name} is read only by --reweight_method {'/'.join(readers)} and has no effect on "
                f"{', '.join(methods)}; drop it (or train one of those methods)."
            )
    no_targets = (data_args.train_file or data_args.dataset_name) and not data_args.target_files
    if no_targets and changed_from_default(data_args, ["eval_fraction"]):
        raise ValueError(
            "--eval_fraction splits the target tasks' blocks, but this run has none (own sources without "
            "--target_files); drop it or pass --target_files."
        )


def _refuse_colliding_output_names(args: GrapeRecipeConfig) -> None:
    """--export_mixture_file / --plot_file naming another output of the run (the results, the comparison, the saved
    model or tokenizer) were accepted: that file then overwrote the exported mixture, or the mixture the file."""
    for flag, name in (("--export_mixture_file", args.export_mixture_file), ("--plot_file", args.plot_file)):
        if not name:
            continue
        base = os.path.normpath(name)
        if base in OWN_OUTPUT_FILES or base.endswith((".safetensors", ".safetensors.index.json", ".bin")):
            raise ValueError(
                f"{flag} {name!r} names a file the recipe writes itself into --output_dir (results, comparison, run "
                "record, saved model or tokenizer), which would overwrite it or be overwritten; pick another name "
                "(defaults: mixture.json, mixture_weights.png)."
            )


def _refuse_unsupported_training_setup(args: GrapeRecipeConfig, methods: list[str]) -> None:
    """GrapeTrainer's refusals of reentrant activation checkpointing (grape*, doge) and of FSDP / DeepSpeed (every
    method that takes gradients), made before the earlier run's results are cleared: the trainer makes them only once
    it is built, after the tokenizer and the data."""
    from ..grape.rules import GRAPE_VARIANTS
    from ..grape.trainer import _reentrant_checkpointing_message
    from ..utils.checks import reentrant_checkpointing

    gradient_methods = [m for m in methods if m in (*GRAPE_VARIANTS, "doge")]
    kwargs = args.activation_checkpointing_kwargs if args.activation_checkpointing else None
    reentrant = reentrant_checkpointing(kwargs, None)
    if gradient_methods and reentrant:
        raise ValueError(_reentrant_checkpointing_message(gradient_methods[0], reentrant))
    sharding = [m for m in methods if m not in ("uniform", "fixed")]
    flag = None
    if args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        flag = "--fsdp"
    elif args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"):
        flag = "--deepspeed"
    if sharding and flag:
        raise ValueError(
            f"reweight_method={sharding[0]!r} takes per-domain gradients of the full model, which needs DDP (or one "
            f"process); FSDP and DeepSpeed ({flag}) are supported only with reweight_method=uniform or fixed."
        )


def validate_args(
    data_args: GrapeDataArguments,
    model_args: GrapeModelArguments,
    args: GrapeRecipeConfig,
    eval_args: GrapeEvalArguments | None = None,
) -> None:
    """Check arguments before anything is loaded or written."""
    from ..data import corpus_domains
    from ..data.loading import check_dataset_name
    from ..utils.io import ensure_writable_dir
    from ._common import refuse_undistributed_launch

    refuse_undistributed_launch(args, "grape")  # N ranks that would each train alone
    if eval_args is not None:
        _validate_eval_args(eval_args, args)
    _refuse_inapplicable_flags(data_args, args, eval_args)

    if data_args.train_file and data_args.dataset_name:
        raise ValueError("Pass either --train_file or --dataset_name, not both.")
    if data_args.train_file and not os.path.isfile(data_args.train_file):
        raise ValueError(f"--train_file={data_args.train_file!r} does not exist.")
    check_dataset_name(  # a path that is no folder, or a Hub name offline
        data_args.dataset_name, "Use a local folder, --train_file, or no argument for the embedded corpus."
    )
    if not 0.0 < data_args.eval_fraction < 1.0:
        raise ValueError(f"--eval_fraction must be in (0, 1), got {data_args.eval_fraction}.")
    if data_args.target_files:
        for name, path in _parse_pairs(data_args.target_files, "--target_files").items():
            if not os.path.isfile(path):
                raise ValueError(f"--target_files: file {path!r} for task {name!r} does not exist.")
    elif data_args.train_file or data_args.dataset_name:
        needs = set(_methods(eval_args, args)) & {"grape", "grape_ema", "grape_gap", "doge"}
        if needs:
            raise ValueError("With your own sources, pass --target_files name=path,... for the target tasks.")
    else:
        known = set(corpus_domains())
        for name, domains in _parse_pairs(data_args.target_domains, "--target_domains").items():
            unknown = sorted(set(domains.split("+")) - known)
            if unknown:
                raise ValueError(
                    f"--target_domains task {name!r} names unknown domains {unknown}; use {sorted(known)}."
                )
    if data_args.source_domains:
        wanted = data_args.source_domains.split(",")
        if not all(d.strip() for d in wanted):
            raise ValueError(
                f"--source_domains must be comma-separated domain names, got {data_args.source_domains!r}."
            )
        if data_args.train_file or data_args.dataset_name:
            # Read the sources' domain column now: an unknown name would otherwise be dropped silently by the filter
            # (or, with no known name left, fail late while packing), after the tokenizer and target work.
            sources = _load_sources(data_args, args)
            if args.domain_column not in sources.column_names:
                raise ValueError(
                    f"--source_domains needs the domain column {args.domain_column!r}, which the sources lack "
                    f"(columns: {sources.column_names}); pass --domain_column."
                )
            from ..grape.data import domain_rows

            available = domain_rows(sources, args.domain_column)[0]  # refuses a null domain
        else:
            available = sorted(corpus_domains())
        unknown = sorted({d.strip() for d in wanted} - set(available))
        if unknown:
            raise ValueError(f"--source_domains has unknown domains {unknown}; the sources have {available}.")
    if model_args.model_name_or_path is None and model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    from ._common import check_model_tokenizer_files, check_vocab_size
    from .pretrain import check_ignored_model_flags

    # fresh-model sizes and --vocab_size a loaded model/tokenizer ignores
    check_ignored_model_flags(model_args, data_args)
    check_model_tokenizer_files(model_args.model_name_or_path, data_args.tokenizer_name, tokenizer_flag=True)
    check_vocab_size(data_args.vocab_size, data_args.tokenizer_name or model_args.model_name_or_path)
    for flag, path in (
        ("--model_name_or_path", model_args.model_name_or_path),
        ("--reference_model_name_or_path", args.reference_model_name_or_path),
    ):
        # a learned position table shorter than a block: refused by the trainer after the earlier run's results were
        # cleared (the model), or a bare IndexError at the first DoReMi update (the reference)
        if path:
            _check_model_positions(path, flag, args.block_size)
    if args.max_steps is None or args.max_steps <= 0:
        raise ValueError("--max_steps must be a positive number of optimizer steps.")
    if args.mixture_file:
        _check_mixture_file(data_args, args)
    _check_checkpoints(args, eval_args)
    if args.resume_from_checkpoint and not (eval_args is not None and eval_args.compare_methods is not None):
        from ..utils.resume import resolve_resume_checkpoint
        from ._common import check_run_record, checkpoint_run_folder, refuse_checkpoints_of_another_run

        checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
        run_folder = checkpoint_run_folder(checkpoint, args.output_dir, RUN_RECORD_NAME)
        check_run_record(  # the data and model of the run that wrote it (its folder's record)
            run_folder,
            RUN_RECORD_NAME,
            _run_record(data_args, model_args, args),
            "the sources, targets, blocks and model",
        )
        # a checkpoint of another folder's run: not beside the checkpoints of yet another run (`write_run_record`)
        refuse_checkpoints_of_another_run(checkpoint, run_folder, args.output_dir)
        from ..grape.trainer import check_resume_options

        # the mixture settings the checkpoint records (step sizes, clip, batch split, data seed, ...): before the
        # tokenizer and data work, the run record's write and the clearing (the trainer checks them again on restore)
        check_resume_options(checkpoint, args, arg="--resume_from_checkpoint")
    ensure_writable_dir(args.output_dir, "--output_dir")


def _check_model_positions(path: str, flag: str, block_size: int) -> None:
    """Refuse a --block_size longer than the learned position table (GPT-2's `n_positions`) of the model `flag` names,
    from its config on the meta device (no weights read), before the tokenizer and data work."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ._common import check_learned_positions

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - not built from its config here (no causal LM, a missing extra): the trainer's load says why
        return
    check_learned_positions(model, f"the model {flag} {path!r}", block_size)


#: Written into --output_dir when a (single-method) run starts afresh: the flags that define its sources, targets,
#: blocks and model, compared on resume (the mixture state's own checks cover the domain and task names, the method and
#: the data seed).
RUN_RECORD_NAME = "grape_run.json"
_RECORD_CONFIG_FLAGS = ("block_size", "text_column", "domain_column")


def _resumed_checkpoint(args: GrapeRecipeConfig) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names (`last`/bare resolved in --output_dir), or None."""
    from ..utils.resume import resolve_resume_checkpoint, wants_resume

    if not wants_resume(args.resume_from_checkpoint):
        return None
    return resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)


def _run_record(data_args: GrapeDataArguments, model_args: GrapeModelArguments, args: GrapeRecipeConfig) -> dict:
    """The flags a resume must keep: another --block_size, --eval_fraction or --num_attention_heads of the same width
    would load the checkpoint and go on training silently on other blocks, or as another model."""
    return {
        **{f.name: getattr(data_args, f.name) for f in fields(data_args)},
        **{f.name: getattr(model_args, f.name) for f in fields(model_args)},
        **{name: getattr(args, name) for name in _RECORD_CONFIG_FLAGS},
        "seed": args.seed,  # splits each target into reweighting and evaluation blocks (whatever --data_seed is)
    }


def _check_mixture_file(data_args: GrapeDataArguments, args: GrapeRecipeConfig) -> None:
    """Read --mixture_file and check its domains against the sources now: it used to be read only when the trainer of
    a method that uses it was built, after the tokenizer and the data (with --compare_methods after the uniform
    baseline had trained)."""
    from ..data import corpus_domains
    from ..grape import GrapeTrainer, load_mixture

    if data_args.source_domains:
        domains = sorted({d.strip() for d in data_args.source_domains.split(",")})
    elif data_args.train_file or data_args.dataset_name:
        from ..grape.data import domain_rows

        domains = domain_rows(_load_sources(data_args, args), args.domain_column)[0]
    else:
        domains = sorted(corpus_domains())
    where = f"--mixture_file {args.mixture_file!r} (mixture_key={args.mixture_key!r})"
    try:
        weights = load_mixture(args.mixture_file, args.mixture_key)
    except ValueError as err:
        raise ValueError(f"--mixture_file: {err}") from None
    GrapeTrainer._weights_from(weights, domains, where)


def _check_checkpoints(args: GrapeRecipeConfig, eval_args: GrapeEvalArguments | None) -> None:
    """A fresh run refuses run folders holding an earlier run's checkpoints; a resume refuses a checkpoint saved
    beyond --max_steps, and one of another --reweight_method (all would continue another run)."""
    from ..utils.resume import check_checkpoint_folders, resolve_resume_checkpoint, wants_resume

    comparing = eval_args is not None and eval_args.compare_methods is not None
    folders = [os.path.join(args.output_dir, m) for m in _methods(eval_args, args)] if comparing else [args.output_dir]
    check_checkpoint_folders(args.resume_from_checkpoint, folders, args.max_steps)
    if not wants_resume(args.resume_from_checkpoint):  # not into another recipe's finished run
        from ._common import refuse_output_dir_of_another_recipe

        refuse_output_dir_of_another_recipe(args.output_dir, RUN_RECORD_NAME)
    if not comparing and wants_resume(args.resume_from_checkpoint):  # --compare_methods refuses the flag
        check_checkpoint_method(resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir), args)


def check_checkpoint_method(checkpoint: str, args: GrapeRecipeConfig) -> None:
    """A checkpoint to resume must hold a mixture state of a run of the same `--reweight_method`: another method's
    weights continued with this method's rule would be reported as this method. A state written before hf_ext
    recorded the method is resumed with a warning (it cannot be checked)."""
    from ..grape.state import STATE_JSON, STATE_TENSORS, saved_reweight_method

    if not all(os.path.isfile(os.path.join(checkpoint, name)) for name in (STATE_JSON, STATE_TENSORS)):
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} holds no mixture state ({STATE_TENSORS} + {STATE_JSON}): it "
            "was not written by this recipe; pass a checkpoint-N folder of one of its runs."
        )
    saved, method = saved_reweight_method(checkpoint), args.reweight_method
    if saved is None:
        logger.warning(
            "--resume_from_checkpoint=%r records no mixture method (written before hf_ext recorded it): it is "
            "resumed as --reweight_method %s unchecked; make sure it is a checkpoint of a %s run.",
            checkpoint,
            method,
            method,
        )
    elif saved != method:
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} is a checkpoint of a {saved!r} run, but --reweight_method is "
            f"{method!r}; pass --reweight_method {saved} to continue it, or a checkpoint of a {method} run."
        )


def _load_file(path: str, text_column: str, flag: str | None = None):
    """`path` through the shared `load_data_file` (an unsupported extension, or a file that does not parse, is a
    `ValueError` naming `flag` and the path); a `.txt` file's documents land in `text_column`."""
    from ..data.loading import _file_builder, load_data_file

    ds = load_data_file(path, flag=flag)
    if _file_builder(path) == "text" and text_column != "text":
        ds = ds.rename_column("text", text_column)
    return ds


def _load_sources(data_args: GrapeDataArguments, args: GrapeRecipeConfig):
    """The sources of `--train_file` or `--dataset_name`, unfiltered."""
    from ..data.loading import load_dataset_or_folder

    if data_args.train_file:
        return _load_file(data_args.train_file, args.text_column, "--train_file")
    loaded = load_dataset_or_folder(data_args.dataset_name, data_args.dataset_config_name)
    if not hasattr(loaded, "keys"):  # a save_to_disk folder of one Dataset
        return loaded
    if "train" not in loaded:
        raise ValueError(
            f"--dataset_name={data_args.dataset_name!r} has no 'train' split (splits: {list(loaded.keys())})."
        )
    return loaded["train"]


def build_data(data_args: GrapeDataArguments, args: GrapeRecipeConfig):
    """Return `(sources, targets)`: raw-text datasets (sources carry the domain column)."""

    from ..data import load_corpus

    if data_args.train_file or data_args.dataset_name:
        sources = _load_sources(data_args, args)
    else:
        domains = [d.strip() for d in data_args.source_domains.split(",")] if data_args.source_domains else None
        sources = load_corpus("train", domains=domains)
    if data_args.source_domains and (data_args.train_file or data_args.dataset_name):
        keep = {d.strip() for d in data_args.source_domains.split(",")}
        sources = sources.filter(lambda r: str(r[args.domain_column]) in keep)
    if data_args.target_files:
        targets = {
            name: _load_file(path, args.text_column, "--target_files")
            for name, path in _parse_pairs(data_args.target_files, "--target_files").items()
        }
    elif data_args.train_file or data_args.dataset_name:
        targets = {}
    else:
        held_out = load_corpus("test")
        targets = {}
        for name, domains in _parse_pairs(data_args.target_domains, "--target_domains").items():
            wanted = set(domains.split("+"))
            targets[name] = held_out.filter(lambda r, w=wanted: r["domain"] in w)
    return sources, targets


def _result_files(args: GrapeRecipeConfig) -> list[str]:
    """The report files a run may write into --output_dir (one method, or one sub-folder per compared method), and
    those an earlier run wrote under the default names: a rerun with `--plot_file ""` or another
    `--export_mixture_file` used to leave the earlier `mixture_weights.png` / `mixture.json` looking current. The
    `--mixture_file` this run reads is never among them (a `fixed` run into the folder of the run that wrote it)."""
    defaults = GrapeRecipeConfig.__dataclass_fields__
    names = [args.export_mixture_file, defaults["export_mixture_file"].default, args.plot_file]
    names.append(defaults["plot_file"].default)
    own = ["grape_results.json", *dict.fromkeys(n for n in names if n)]
    per_method = [os.path.join(method, name) for method in REWEIGHT_METHODS for name in own]
    files = [*own, "target_eval.json", "target_eval.md", "target_eval.png", *per_method]
    if args.mixture_file:
        keep = os.path.realpath(args.mixture_file)
        files = [f for f in files if os.path.realpath(os.path.join(args.output_dir, f)) != keep]
    return files


def run(
    data_args: GrapeDataArguments,
    model_args: GrapeModelArguments,
    args: GrapeRecipeConfig,
    eval_args: GrapeEvalArguments | None = None,
) -> dict:
    """Train with the chosen mixture method(s); print and save the final weights and per-target losses.

    Returns the metrics of the run (one method), or with `--compare_methods` `{"methods": {method: metrics}, ...}`.
    With `--eval_tasks` each method's metrics hold `target_tasks` (lm-eval scores per target and on all items).
    """
    import dataclasses

    from transformers import AutoTokenizer, set_seed

    from ..data import build_tokenizer
    from ..grape.data import domain_rows, prepare_target

    validate_args(data_args, model_args, args, eval_args)
    set_seed(args.seed)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
        from ._common import check_checkpoint_embeds_tokenizer, set_missing_pad_token

        # a fresh model's pad token of its own (padding with EOS made EOS the embedding's padding_idx: zero at init,
        # no gradient from the inputs)
        set_missing_pad_token(tokenizer, fresh_model=not model_args.model_name_or_path)
        if not model_args.model_name_or_path:
            check_checkpoint_embeds_tokenizer(_resumed_checkpoint(args), len(tokenizer))
    else:
        from ._common import warn_embedded_corpus_tokenizer

        given = {"--train_file": data_args.train_file, "--dataset_name": data_args.dataset_name}
        warn_embedded_corpus_tokenizer({**given, "--target_files": data_args.target_files}, data_args.vocab_size)
        with args.main_process_first(desc="build tokenizer"):
            tokenizer = build_tokenizer(data_args.vocab_size)
    from ._common import check_tokenizer_fits_model

    check_tokenizer_fits_model(tokenizer, model_args.model_name_or_path, data_args.tokenizer_name)
    sources, raw_targets = build_data(data_args, args)
    domain_rows(sources, args.domain_column)  # the domain column (present, no null) checked before any other work

    # Split each target into blocks used for reweighting and blocks kept for evaluation.
    reweight_targets, eval_targets = {}, {}
    with args.main_process_first(desc="pack targets"):
        for name, ds in raw_targets.items():
            blocks = prepare_target(name, ds, tokenizer, args.block_size, args.text_column)
            if len(blocks) < 2:
                raise ValueError(f"target {name!r} has fewer than 2 blocks of {args.block_size} tokens.")
            n_eval = min(max(1, round(len(blocks) * data_args.eval_fraction)), len(blocks) - 1)
            split = blocks.train_test_split(test_size=n_eval, seed=args.seed, shuffle=True)
            reweight_targets[name], eval_targets[name] = split["train"], split["test"]
    # after the tokenizer and the data (a bad data file or --block_size fails there): a run refused for a bad
    # argument leaves the earlier run's results alone
    if args.process_index == 0:
        from ._common import clear_previous_results

        clear_previous_results(args.output_dir, _result_files(args), bool(args.resume_from_checkpoint))

    comparing = eval_args is not None and eval_args.compare_methods is not None
    if args.process_index == 0 and not comparing:
        from ._common import write_run_record  # what a resume of this run must keep (checked in `validate_args`)

        record = _run_record(data_args, model_args, args)
        write_run_record(args.output_dir, RUN_RECORD_NAME, record, resumed_from=_resumed_checkpoint(args))
    tasks = _eval_task_list(eval_args)
    methods = _methods(eval_args, args)
    if len(methods) > 1 and "input_ids" not in sources.column_names:
        # every method's trainer would pack the same text with the same tokenizer and --block_size: pack it once here
        # (as `GrapeTrainer` does) and hand each trainer the blocks
        from ..grape.data import pack_by_domain

        with args.main_process_first(desc="pack training data by domain"):
            sources = pack_by_domain(sources, tokenizer, args.block_size, args.domain_column, args.text_column)
    results = {}
    for method in methods:
        sub = args
        if comparing:
            reference = args.reference_model_name_or_path
            if method == "doremi" and not reference:
                reference = os.path.join(args.output_dir, "uniform")
            sub = dataclasses.replace(
                args,
                reweight_method=method,
                output_dir=os.path.join(args.output_dir, method),
                reference_model_name_or_path=reference,
                # the uniform baseline is uniform: --mixture_file gives the fixed weights and the other methods'
                # initial weights, never the baseline's
                mixture_file=None if method == "uniform" else args.mixture_file,
            )
        results[method] = _train_one(sub, model_args, tokenizer, sources, reweight_targets, eval_targets)
    if not (comparing or tasks):
        return results[args.reweight_method]

    if args.process_index == 0:
        target_domains = None
        if not (data_args.target_files or data_args.train_file or data_args.dataset_name):
            target_domains = {
                name: domains.split("+")
                for name, domains in _parse_pairs(data_args.target_domains, "--target_domains").items()
            }
        for method, metrics in results.items():
            if tasks:
                folder = args.output_dir if not comparing else os.path.join(args.output_dir, method)
                metrics["target_tasks"] = evaluate_target_tasks(
                    folder,
                    tasks,
                    target_domains,
                    limit=eval_args.eval_limit,
                    num_fewshot=eval_args.eval_num_fewshot,
                    batch_size=args.per_device_eval_batch_size,
                    seed=args.seed,
                )
                atomic_write_results(os.path.join(folder, "grape_results.json"), metrics, 2)
        _write_comparison(results, list(eval_targets), tasks, args.output_dir)
    if not comparing:
        return results[args.reweight_method]
    return {"methods": results, "table": os.path.join(args.output_dir, "target_eval.md")}


def _train_one(
    args: GrapeRecipeConfig, model_args: GrapeModelArguments, tokenizer, sources, reweight_targets, eval_targets
):
    """Train one model with `args.reweight_method`, save it to `args.output_dir` and return its metrics."""
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    from ..grape import GrapeTrainer
    from ..utils.evaluation import causal_lm_eval_loss

    set_seed(args.seed)  # the same initialisation for every method of a comparison
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    else:
        config = AutoConfig.for_model(
            "llama",
            vocab_size=len(tokenizer),
            hidden_size=model_args.hidden_size,
            intermediate_size=model_args.intermediate_size,
            num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=model_args.num_attention_heads,
            num_key_value_heads=model_args.num_attention_heads,
            max_position_embeddings=max(args.block_size, 128),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        model = AutoModelForCausalLM.from_config(config)

    trainer = GrapeTrainer(
        model=model,
        args=args,
        train_dataset=sources,
        target_datasets=reweight_targets or None,
        processing_class=tokenizer,
    )
    from ..utils.resume import train_or_restore_finished

    # the weight figure is written last (below), after the model and grape_results.json: a plot that fails at the end
    # (e.g. a pgf figure whose TeX system went missing) can no longer lose the trained model and the results
    trainer.plot_at_train_end = False
    # a checkpoint at --max_steps (a run stopped after its last checkpoint) is restored, not trained a step past
    result = train_or_restore_finished(trainer, args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    st = trainer.mixture_state
    from ._common import whole_run_train_loss

    metrics = {
        "method": args.reweight_method,
        "train_loss": whole_run_train_loss(trainer, result.training_loss if result else 0.0),
        "domain_weights": dict(zip(st.domain_names, st.domain_weights.tolist())),
        "average_domain_weights": dict(zip(st.domain_names, st.average_domain_weights().tolist())),
        "task_weights": dict(zip(st.task_names, st.task_weights.tolist())),
        "reweight_seconds": trainer.reweight_seconds,
        "train_seconds": result.metrics.get("train_runtime") if result else None,
    }
    # Under FSDP (or DeepSpeed) the trained model's weights are sharded: its forward gathers them from every rank, so
    # every rank evaluates (the same blocks, the same forwards); the main process alone hung in the first gather
    # while the others waited at the end of the run. Plain data parallelism keeps whole weights: the main process only.
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    target_eval_loss = (
        {
            name: causal_lm_eval_loss(trainer.model, ds, args.per_device_eval_batch_size)
            for name, ds in eval_targets.items()
        }
        if sharded or trainer.is_world_process_zero()
        else {}
    )
    if trainer.is_world_process_zero():
        metrics["target_eval_loss"] = target_eval_loss
        if metrics["target_eval_loss"]:
            losses = list(metrics["target_eval_loss"].values())
            metrics["target_eval_perplexity"] = {n: _perplexity(v) for n, v in metrics["target_eval_loss"].items()}
            metrics["mean_target_eval_loss"] = sum(losses) / len(losses)
            metrics["worst_target_eval_loss"] = max(losses)
        atomic_write_results(os.path.join(args.output_dir, "grape_results.json"), metrics, 2)
        trainer.save_mixture_plot(args.output_dir)
        print(f"method: {args.reweight_method}  ({st.domain_updates} domain / {st.task_updates} task updates)")
        print("final domain weights:")
        for name, w in sorted(metrics["domain_weights"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:<16} {w:.4f}")
        if metrics["task_weights"]:
            print("final task weights:")
            for name, w in metrics["task_weights"].items():
                print(f"  {name:<16} {w:.4f}")
        for name, loss in metrics["target_eval_loss"].items():
            print(f"held-out loss on target {name}: {loss:.4f}")
        print(f"mixture: {os.path.join(args.output_dir, args.export_mixture_file)}")
        if args.plot_file:
            print(f"weight trajectories: {os.path.join(args.output_dir, args.plot_file)}")
    return metrics


def evaluate_target_tasks(
    model,
    tasks: list[str],
    target_domains: dict[str, list[str]] | None,
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 8,
    seed: int = 0,
    tokenizer=None,
) -> dict:
    """lm-eval scores of one trained model: on all items (`"all"`) and, for the packaged tasks, per target.

    Args:
        model: A `save_pretrained` folder (as a user runs `lm_eval --model hf`) or a model object with `tokenizer`.
        tasks (`list[str]`): lm-eval task names or tags.
        target_domains (`dict[str, list[str]]`, *optional*): Target name -> embedded-corpus domains. The packaged
            tasks (`hf_ext_domain`, `hf_ext_cloze`, ...) are then also scored on the test items of those domains only
            (lm-eval metadata `domains`); other tasks and `target_domains=None` give `"all"` only.

    Returns:
        `dict`: `{scope: {task: {metric: value, f"{metric}_stderr": stderr, "n": items}}}`, scope `"all"` or a target.
    """
    from ..evaluation.harness import evaluate_model, results_rows, task_manager

    packaged = set(task_manager(include_defaults=False).all_tasks)
    scopes: dict[str, tuple[list[str], dict | None]] = {"all": (tasks, None)}
    restricted = [t for t in tasks if t in packaged]
    for name, domains in (target_domains or {}).items():
        if restricted:
            scopes[name] = (restricted, {"domains": "+".join(domains)})
    out = {}
    for scope, (scope_tasks, metadata) in scopes.items():
        res = evaluate_model(
            model,
            tokenizer,
            tasks=scope_tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            metadata=metadata,
        )
        table: dict[str, dict] = {}
        for row in results_rows(res):
            entry = table.setdefault(row["task"], {"n": row["n"]})
            entry[row["metric"]] = row["value"]
            entry[f"{row['metric']}_stderr"] = row["stderr"]
        out[scope] = table
    return out


def _perplexity(loss: float) -> float:
    """exp(loss); `inf` past float range (a diverged run's loss above ~709 overflowed `math.exp` after training and lost
    the run's results file), NaN for NaN."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _fmt(value, stderr=None) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    if isinstance(stderr, int | float) and math.isfinite(stderr):
        return f"{value:.3f} ± {stderr:.3f}"
    return f"{value:.3f}"


def comparison_table(results: dict[str, dict], targets: list[str]) -> str:
    """Markdown table, one row per method: held-out target loss and perplexity, then lm-eval accuracies per target."""
    head = ["method"]
    head += [f"loss {t}" for t in targets] + [f"ppl {t}" for t in targets]
    if targets:
        head += ["mean loss", "worst loss"]
    columns = []  # (scope, task, metric)
    for metrics in results.values():
        for scope, per_task in (metrics.get("target_tasks") or {}).items():
            for task, values in per_task.items():
                for metric in TABLE_METRICS:
                    if metric in values and (scope, task, metric) not in columns:
                        columns.append((scope, task, metric))
    order = {s: i for i, s in enumerate([*targets, "all"])}
    columns.sort(key=lambda c: (c[1], TABLE_METRICS.index(c[2]), order.get(c[0], len(order))))
    head += [f"{task} {metric} ({scope})" for scope, task, metric in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method, m in results.items():
        losses = m.get("target_eval_loss") or {}
        cells = [method] + [_fmt(losses.get(t)) for t in targets]
        cells += [_fmt(_perplexity(losses[t])) if t in losses else "–" for t in targets]
        if targets:
            cells += [_fmt(m.get("mean_target_eval_loss")), _fmt(m.get("worst_target_eval_loss"))]
        for scope, task, metric in columns:
            values = ((m.get("target_tasks") or {}).get(scope) or {}).get(task) or {}
            cells.append(_fmt(values.get(metric), values.get(f"{metric}_stderr")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_comparison(results: dict[str, dict], targets: list[str], tasks: list[str], output_dir: str) -> None:
    """`target_eval.json` and `target_eval.md` (written first), then `target_eval.png`."""
    from ..utils.io import atomic_write_results, atomic_write_text

    table = comparison_table(results, targets)
    note = (
        "Held-out next-token loss on each target's evaluation blocks (lower is better); lm-eval scores as value ± "
        "stderr, `(target)` = the task's test items from that target's domains only, `(all)` = every item."
    )
    atomic_write_results(
        os.path.join(output_dir, "target_eval.json"),
        {"methods": results, "targets": targets, "eval_tasks": tasks, "table_metrics": list(TABLE_METRICS)},
    )
    atomic_write_text(os.path.join(output_dir, "target_eval.md"), f"{table}\n\n{note}\n")
    print("\nTarget comparison:\n" + table)
    print(f"table: {os.path.join(output_dir, 'target_eval.md')}")
    if len(results) > 1 and targets:
        _plot_comparison(results, targets, os.path.join(output_dir, "target_eval.png"))


def _plot_comparison(results: dict[str, dict], targets: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.io import atomic_savefig

    methods = list(results)
    accs = []  # (label, {method: value}) for the first table metric of each packaged task, per target
    for task in sorted({t for m in results.values() for s in (m.get("target_tasks") or {}).values() for t in s}):
        for target in targets:
            vals = {
                m: (((results[m].get("target_tasks") or {}).get(target) or {}).get(task) or {}).get("acc")
                for m in methods
            }
            if any(isinstance(v, float) for v in vals.values()):
                accs.append((f"{task} acc\n({target})", vals))
    panels = [
        ("held-out target loss", {t: {m: results[m]["target_eval_loss"].get(t) for m in methods} for t in targets})
    ]
    if accs:
        panels.append(("target-task accuracy", dict(accs)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 3.5), squeeze=False)
    width = 0.8 / len(methods)
    for ax, (title, groups) in zip(axes[0], panels):
        labels = list(groups)
        for i, method in enumerate(methods):
            ys = [groups[g].get(method) or 0.0 for g in labels]
            ax.bar([j + i * width for j in range(len(labels))], ys, width, label=method)
        ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
        ax.set_title(title)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args

    data_args, model_args, args, eval_args = parse_recipe_args(
        (GrapeDataArguments, GrapeModelArguments, GrapeRecipeConfig, GrapeEvalArguments), argv
    )
    return finish(run(data_args, model_args, args, eval_args))


if __name__ == "__main__":
    main()
