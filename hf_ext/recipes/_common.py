"""What every recipe does the same way: parse its arguments and check them before any work.

`parse_recipe_args` is the recipes' `HfArgumentParser` front end. It

- accepts `--resume_from_checkpoint` with no value (the last checkpoint in `--output_dir`, as transformers' example
  scripts do) and resolves the flag to a complete checkpoint folder up front;
- keeps `--help` working whatever the help texts contain (a bare `%` used to crash argparse);
- checks the numeric, generation and file arguments every recipe shares, naming the flag and the fix, before any
  data is loaded, any model is built or anything is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import re
import sys

from ..utils.distributed import launched_processes  # used by refuse_multiple_processes below

_PERCENT = re.compile(r"%%|%\(\w+\)[a-z]|%")


def validation_split_seed_field(validation_file: bool = True):
    """The `--validation_split_seed` dataclass field of the recipes that hold out part of a `--train_file`.

    `validation_file=False` for a recipe without `--validation_file` (`warmup`), whose help must not name it."""
    when = (
        "when no validation data is given (e.g. a --train_file without --validation_file)"
        if validation_file
        else "whenever a --train_file is given (this recipe reads no separate validation data)"
    )
    return dataclasses.field(
        default=0,
        metadata={
            "help": f"Seed of the held-out split drawn from the training data {when}. It does not follow --seed, so "
            "runs that differ only in --seed train and evaluate on the same documents."
        },
    )


#: The command `hf-ext run <recipe>` sets while the recipe runs: the prog of its usage line (`--help`, errors).
CLI_PROG: contextvars.ContextVar[str | None] = contextvars.ContextVar("hf_ext_recipe_cli_prog", default=None)


def _recipe_prog() -> str | None:
    """The command a recipe's usage line names: `hf-ext run <recipe>` under the CLI, `python -m hf_ext.recipes.<r>`
    when the module was run with `-m` (also by torchrun / accelerate launch), otherwise argparse's default (the
    script's file name). argparse's default was the console script's name, `hf-ext`, without `run <recipe>`."""
    prog = CLI_PROG.get()
    if prog is not None:
        return prog
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    if name.startswith(f"{__package__}.") and not name.rpartition(".")[2].startswith("_"):
        return f"python -m {name}"
    return None


def _escape_percent(text: str) -> str:
    """Double every `%` that is not already `%%` or an argparse `%(name)s` field."""
    return _PERCENT.sub(lambda m: "%%" if m.group(0) == "%" else m.group(0), text)


_ROTARY_MODEL_TYPES = ("llama", "fog", "mistral", "qwen2")  # fresh models whose head dimension must be even
# Fields that, where a recipe has them, must be >= 1 (None means "not set" and is allowed).
_POSITIVE_INT = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "block_size",
    "max_new_tokens",
    "max_eval_blocks",
    "vocab_size",
    "num_rounds",
    "num_clients",
    "eval_batch_size",
    "batch_size",
)
# (a recipe's --guidance_scale is > 0, not >= 0: metadata_pretrain checks it with its own message)
_NON_NEGATIVE = (
    "learning_rate", "weight_decay", "warmup_ratio", "warmup_steps", "max_grad_norm", "adam_epsilon",
)  # fmt: skip
_TEXT_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".parquet")
# Flags naming data or a model, where the recipe has them, and what they take: an empty value is refused.
_PATH_FLAGS = (
    ("dataset_name", "a Hub dataset id or a local dataset folder"),
    ("train_file", "a local data file"),
    ("validation_file", "a local data file"),
    ("model_name_or_path", "a model folder or Hub id"),
    ("reference_model_name_or_path", "a model folder or Hub id"),
    ("tokenizer_name", "a tokenizer folder or Hub id"),
)


def parse_recipe_args(types, argv: list[str] | None = None, resume: str = "resolve"):
    """Parse `argv` into the dataclasses `types` with `HfArgumentParser`, then run `validate_parsed` on them.

    Args:
        resume: what `--resume_from_checkpoint` means for this recipe: `"resolve"` (a Trainer checkpoint in
            `--output_dir`, resolved now), `"keep"` (the recipe resolves it itself, e.g. per sub-run folder; `last`
            and folders are passed on as given) or `"refuse"` (the recipe cannot resume: the flag is an error).
    """
    from transformers import HfArgumentParser

    from ..utils.resume import normalize_resume_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    declared = types if isinstance(types, list | tuple) else [types]
    if any(f.name == "resume_from_checkpoint" for t in declared if dataclasses.is_dataclass(t) for f in dataclasses.fields(t)):
        # only where the flag exists: a recipe without it (compliance, cubic_newton) reports the flag as typed, not
        # as the `--resume_from_checkpoint=last` this rewrite gives a bare one
        argv = normalize_resume_argv(argv)
    check_lr_scheduler_kwargs_json(argv)
    prog = _recipe_prog()
    parser = HfArgumentParser(types, **({} if prog is None else {"prog": prog}))
    _accept_none_for_optional_numbers(parser, types)
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = _escape_percent(action.help)
    if any(action.dest == "logging_nan_inf_filter" for action in parser._actions):
        # a diverged step's loss is logged as NaN / inf (transformers' default replaces it by the mean of the losses
        # since the last log, so a loss curve and train_loss hide the divergence); --logging_nan_inf_filter true
        # restores that
        parser.set_defaults(logging_nan_inf_filter=False)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    validate_parsed(parsed, resume=resume)
    return parsed


def _optional_number_fields(dataclass_types) -> set[str]:
    """Names of the `int | None` / `float | None` fields of `dataclass_types` (a dataclass or several), read from the
    annotations (HfArgumentParser overwrites each `Field.type` with the bare type once it has built a parser)."""
    import types
    import typing

    if dataclasses.is_dataclass(dataclass_types):
        dataclass_types = [dataclass_types]
    names = set()
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            hint = hints.get(f.name)
            args = typing.get_args(hint)
            if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
                if next(a for a in args if a is not type(None)) in (int, float):
                    names.add(f.name)
    return names


def _none_or(convert):
    """An argparse `type` that reads `none` (any case) as `None` and anything else with `convert` (`int`, `float`)."""

    def parse(text: str):
        if text.strip().lower() == "none":
            return None
        return convert(text)

    parse.__name__ = convert.__name__  # argparse's error then still says "invalid int value: 'x'"
    return parse


def _accept_none_for_optional_numbers(parser, dataclass_types) -> None:
    """Let `--flag none` (or `None`) set an `int | None` / `float | None` field to `None` (e.g. metadata_pretrain's
    `--max_metadata_tokens None`: no limit). HfArgumentParser gives such a field `type=int` (or `float`), so the
    documented `None` was refused as an invalid int and the field's `None` meaning could not be reached from the
    command line whenever its default was a number."""
    optional = _optional_number_fields(dataclass_types)
    for action in parser._actions:
        if action.dest in optional and action.type in (int, float):
            action.type = _none_or(action.type)


def _flag(name: str) -> str:
    return f"--{name}"


def _fresh_model_type(obj) -> str:
    """The architecture of the fresh model a recipe builds from the dataclass `obj`: its `--model_type` (pretrain,
    metadata_pretrain, neuralgrok) or `--architecture` (warmup: llama, gpt2 or openai-gpt); a recipe with neither
    flag (federated, grape, hyperinf, layer_parallel) builds a Llama."""
    for name in ("model_type", "architecture"):
        value = getattr(obj, name, None)
        if isinstance(value, str):
            return value
    return "llama"


def validate_parsed(parsed, resume: str = "resolve") -> None:
    """Check the arguments shared by the recipes; raise `ValueError` naming the flag and the fix."""
    from transformers import TrainingArguments

    for obj in parsed:
        if not dataclasses.is_dataclass(obj):
            continue
        names = {f.name for f in dataclasses.fields(obj)}
        for name in _POSITIVE_INT:
            if name in names:
                value = getattr(obj, name)
                if value is not None and (not isinstance(value, int) or value < 1):
                    raise ValueError(f"{_flag(name)} must be a positive integer, got {value!r}.")
        for name in _NON_NEGATIVE:
            if name in names:
                value = getattr(obj, name)
                if value is not None and (not math.isfinite(float(value)) or float(value) < 0):
                    raise ValueError(f"{_flag(name)} must be a finite number >= 0, got {value!r}.")
        if {"hidden_size", "num_attention_heads"} <= names and not getattr(obj, "model_name_or_path", None):
            if obj.hidden_size % obj.num_attention_heads:
                raise ValueError(
                    f"--hidden_size ({obj.hidden_size}) must be divisible by --num_attention_heads "
                    f"({obj.num_attention_heads}); change one of them."
                )
            head_dim = obj.hidden_size // obj.num_attention_heads
            # the recipes' fresh models (Llama, FOG, Mistral, Qwen2) rotate each head's dimensions in pairs; the
            # config refused an odd head dimension later, naming neither flag
            if head_dim % 2 and _fresh_model_type(obj) in _ROTARY_MODEL_TYPES:
                raise ValueError(
                    f"--hidden_size / --num_attention_heads = {obj.hidden_size} / {obj.num_attention_heads} = "
                    f"{head_dim} is the head dimension, which rotary position embeddings need even: change one of "
                    f"them (e.g. --hidden_size {(head_dim + 1) * obj.num_attention_heads})."
                )
            kv = getattr(obj, "num_key_value_heads", None)
            if kv and obj.num_attention_heads % kv:
                raise ValueError(
                    f"--num_attention_heads ({obj.num_attention_heads}) must be divisible by --num_key_value_heads "
                    f"({kv})."
                )
        if "seed" in names and not 0 <= obj.seed < 2**32:  # `set_seed` refused it late, naming no flag
            raise ValueError(f"--seed must be an integer in [0, 2**32), got {obj.seed!r}.")
        if "validation_split_seed" in names and not 0 <= obj.validation_split_seed < 2**32:
            raise ValueError(
                f"--validation_split_seed must be an integer in [0, 2**32), got {obj.validation_split_seed!r}."
            )
        if "validation_split_seed" in names and obj.validation_split_seed != 0:
            own_data = getattr(obj, "train_file", None) or getattr(obj, "dataset_name", None)
            if not own_data or getattr(obj, "validation_file", None):
                raise ValueError(
                    f"--validation_split_seed {obj.validation_split_seed} is ignored: "
                    + (
                        "--validation_file is the validation data"
                        if own_data
                        else "the embedded corpus has a fixed held-out split"
                    )
                    + ". It seeds the split held out of --train_file"
                    # name only the flags this recipe has (warmup has neither --dataset_name nor --validation_file)
                    + (" (or a --dataset_name without a validation split)" if "dataset_name" in names else "")
                    + "; drop it."
                )
        for name, what in _PATH_FLAGS:
            if name in names and getattr(obj, name) == "":
                # `--dataset_name ""` failed inside `datasets` with a bare IndexError; the others were read as "not
                # given" (a fresh model, the embedded corpus), so an unset shell variable silently changed the run
                raise ValueError(
                    f"{_flag(name)} is an empty string (an unset shell variable?); pass {what}, or drop the flag "
                    "to run without it."
                )
        # a folder of data files (or a `save_to_disk` dataset) is read by --dataset_name, where the recipe has it
        folders = "dataset_name" if "dataset_name" in names else None
        if "train_file" in names and getattr(obj, "train_file", None):
            check_text_file(obj.train_file, "--train_file", folders)
        if "validation_file" in names and getattr(obj, "validation_file", None):
            check_text_file(obj.validation_file, "--validation_file", folders)
        if "model_name_or_path" in names and getattr(obj, "model_name_or_path", None):
            check_model_reference(obj.model_name_or_path, "--model_name_or_path")
        if "tokenizer_name" in names and getattr(obj, "tokenizer_name", None):
            check_model_reference(obj.tokenizer_name, "--tokenizer_name", _TOKENIZER_FILES, "tokenizer")
        if {"lr_scheduler_type", "lr_scheduler_kwargs"} <= names:
            check_lr_scheduler_kwargs(obj.lr_scheduler_type, obj.lr_scheduler_kwargs)
        if isinstance(obj, TrainingArguments):
            validate_training_arguments(obj, resume=resume)


_LR_SCHEDULER_KWARGS = "--lr_scheduler_kwargs"


def _not_a_json_object(value, why: str = "") -> ValueError:
    return ValueError(
        f"{_LR_SCHEDULER_KWARGS} must be a JSON object of the schedule's options, e.g. "
        f"'{{\"num_decay_steps\": 0.2}}' (or '{{}}' for none); got {value!r}{why}."
    )


def check_lr_scheduler_kwargs_json(argv: list[str]) -> None:
    """A `--lr_scheduler_kwargs` value that starts with `{` but is no JSON: transformers' `TrainingArguments` parses it
    while the arguments are parsed and failed with the bare `json` message, naming no flag."""
    import json

    for i, token in enumerate(argv):
        if token == _LR_SCHEDULER_KWARGS and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(_LR_SCHEDULER_KWARGS + "="):
            value = token.split("=", 1)[1]
        else:
            continue
        if value.lstrip().startswith("{"):
            try:
                json.loads(value)
            except ValueError as err:
                raise _not_a_json_object(value, f" ({err})") from None


def lr_scheduler_options(lr_scheduler_type) -> set[str] | None:
    """The `--lr_scheduler_kwargs` names transformers' `get_scheduler` passes on to the schedule `lr_scheduler_type`
    (what the Trainers here build too): the schedule function's own keyword arguments, without those `get_scheduler`
    fills itself (the optimizer, the warmup and training step counts). An empty set for the constant schedules, which
    `get_scheduler` builds without them; `None` (any name) for a schedule that takes `**kwargs`."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    name = SchedulerType(lr_scheduler_type)
    if name in (SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP):
        return set()
    params = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[name]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    filled = {"optimizer", "num_warmup_steps", "num_training_steps"}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in params.items() if n not in filled and p.kind in kinds}


def check_lr_scheduler_kwargs(lr_scheduler_type, lr_scheduler_kwargs) -> None:
    """`--lr_scheduler_kwargs` against `--lr_scheduler_type`, before any work: a JSON object (transformers keeps any
    value that does not start with `{` as a string, which failed when the schedule was built) whose names are options
    of the schedule ([`lr_scheduler_options`]; another schedule's option failed there with a bare `TypeError`, and
    the constant schedules ignored them)."""
    from transformers.trainer_utils import SchedulerType

    if lr_scheduler_kwargs is None:
        return
    if not isinstance(lr_scheduler_kwargs, dict):
        raise _not_a_json_object(lr_scheduler_kwargs)
    try:
        allowed = lr_scheduler_options(lr_scheduler_type)
    except (ValueError, KeyError):  # not a transformers schedule: its own check names it
        return
    unknown = sorted(set(lr_scheduler_kwargs) - allowed) if allowed is not None else []
    if unknown:
        name = SchedulerType(lr_scheduler_type).value
        takes = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes none: drop --lr_scheduler_kwargs"
        raise ValueError(
            f"{_LR_SCHEDULER_KWARGS} {', '.join(map(repr, unknown))} "
            f"{'is not an option' if len(unknown) == 1 else 'are not options'} of --lr_scheduler_type {name} "
            f"({takes}). Pass only its options in {_LR_SCHEDULER_KWARGS}, or choose the schedule they belong to."
        )


def _strategy(value) -> str:
    return str(getattr(value, "value", value))


def validate_training_arguments(args, resume: str = "resolve") -> None:
    """Training length, step flags without their strategy and `--resume_from_checkpoint`, checked before any work."""
    from ..utils.resume import resolve_resume_checkpoint, wants_resume

    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    # (flag, its strategy, the strategies under which transformers reads it)
    for steps, strategy, read_by in (
        ("save_steps", "save_strategy", ("steps",)),
        ("save_total_limit", "save_strategy", ("steps", "epoch", "best")),
        ("eval_steps", "eval_strategy", ("steps",)),
    ):
        value, current = getattr(args, steps), _strategy(getattr(args, strategy))
        if current not in read_by and value != defaults.get(steps):
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            default = " (this recipe's default)" if current == defaults.get(strategy) else ""
            raise ValueError(
                f"--{steps} {shown} is ignored: --{strategy} is '{current}'{default}. Pass --{strategy} steps with it, "
                "or drop it."
            )

    # transformers reads a value below 1 as a fraction of the run (ceil(max_steps * value): at least one step for a
    # fraction in (0, 1)); 0, a negative or a non-finite value never saved / evaluated during training, silently
    for steps, strategy, what in (
        ("save_steps", "save_strategy", "save a checkpoint"),
        ("eval_steps", "eval_strategy", "evaluate"),
    ):
        value = getattr(args, steps)
        if _strategy(getattr(args, strategy)) == "steps" and value is not None:
            if not (math.isfinite(value) and value > 0):
                shown = int(value) if math.isfinite(value) and float(value).is_integer() else value
                raise ValueError(
                    f"--{steps} must be a positive number of steps (or a fraction in (0, 1) of the run), got {shown}: "
                    f"with --{strategy} steps the run would never {what} during training. Pass e.g. --{steps} 500 "
                    f"(or --{steps} 0.25 for every quarter of the run), or --{strategy} no."
                )
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise ValueError(
            f"--save_total_limit must be >= 1 (the number of checkpoints kept), got {args.save_total_limit}: "
            "transformers would read it as no limit. Drop the flag to keep every checkpoint."
        )
    if args.dataloader_num_workers < 0:
        # torch's DataLoader refused it only once the data and the model were built, naming no flag
        raise ValueError(
            f"--dataloader_num_workers must be >= 0 (0 loads the batches in the main process), got "
            f"{args.dataloader_num_workers}."
        )
    if not math.isfinite(args.learning_rate) or args.learning_rate < 0:
        raise ValueError(f"--learning_rate must be a finite number >= 0, got {args.learning_rate}.")
    # checked here, not first by the optimizer, which fails after the data is loaded and names no flag
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:  # also refuses NaN
            raise ValueError(f"--{name} must be in [0, 1), got {value}.")
    # transformers' LabelSmoother weighs the target's log-likelihood by 1 - factor without checking it: above 1 the
    # run trains the model AWAY from the labels (and below 0 the loss rewards confidence it has not got), silently
    smoothing = args.label_smoothing_factor
    if not 0.0 <= smoothing < 1.0:  # also refuses NaN
        raise ValueError(
            f"--label_smoothing_factor must be in [0, 1) (the probability mass spread over the vocabulary; 0 = off), "
            f"got {smoothing}."
        )
    if _strategy(args.logging_strategy) == "steps" and not (
        math.isfinite(args.logging_steps) and args.logging_steps > 0
    ):
        raise ValueError(
            f"--logging_steps must be a positive number of steps (or a fraction in (0, 1) of the run), got "
            f"{args.logging_steps}: with it the run would never log its loss."
        )
    # a step-only recipe (its training arguments set `epoch_based_runs = False`) refuses --max_steps -1, so the
    # messages must not offer it
    epochs = getattr(args, "epoch_based_runs", True)
    if args.max_steps == 0 or args.max_steps < -1 or (args.max_steps == -1 and not epochs):
        raise ValueError(
            f"--max_steps must be a positive number of optimizer steps (or -1 to train for --num_train_epochs), "
            f"got {args.max_steps}."
            if epochs
            else f"--max_steps must be a positive number of optimizer steps, got {args.max_steps}: this recipe trains "
            "a fixed number of steps (it has no epoch-based runs); set --max_steps N."
        )
    if args.max_steps == -1 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise ValueError(
            f"--num_train_epochs must be > 0 when --max_steps is not set, got {args.num_train_epochs}; "
            "set one of them to a positive value."
        )
    if args.max_steps > 0 and changed_from_default(args, ["num_train_epochs"]):
        raise ValueError(
            f"--num_train_epochs {args.num_train_epochs:g} is ignored: --max_steps {args.max_steps} sets the length of "
            + (
                "the run. Drop it, or pass --max_steps -1 with it to train for that many epochs."
                if epochs
                else "the run, and this recipe trains a fixed number of steps (it has no epoch-based runs). Drop "
                "--num_train_epochs and set the length with --max_steps N."
            )
        )
    if args.do_predict:
        raise ValueError("--do_predict is ignored: the recipes never run Trainer.predict; drop it.")
    if args.do_eval and _strategy(args.eval_strategy) == "no":
        raise ValueError(
            "--do_eval is ignored: the Trainer evaluates during training by --eval_strategy, not --do_eval (a recipe "
            "that reports a held-out evaluation after training does so whatever the flag). Drop it, or pass "
            "--eval_strategy steps --eval_steps N where the recipe accepts it."
        )
    if resume == "refuse":
        if wants_resume(args.resume_from_checkpoint):
            raise ValueError(
                "--resume_from_checkpoint is not supported by this recipe (it has no resumable Trainer state); drop "
                "the flag and start the run again."
            )
        args.resume_from_checkpoint = None
    elif resume == "resolve":
        args.resume_from_checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)


def check_vocab_size(vocab_size: int, loaded: str | None) -> None:
    """`--vocab_size` of the tokenizer built on the fly (not used with a loaded one): what `build_tokenizer` accepts."""
    from ..data.tokenizer import vocab_size_problem

    problem = None if loaded else vocab_size_problem(vocab_size, "--vocab_size")
    if problem:
        raise ValueError(problem)


def check_text_file(path: str, flag: str, folder_flag: str | None = None) -> None:
    """`path` must be an existing, non-empty text/JSON/CSV/Parquet file. `folder_flag`: the recipe's flag that reads a
    folder of data files (`dataset_name`), named when `path` is a folder."""
    if os.path.isdir(path):  # was refused as "does not exist"
        where = (
            f" (a folder of data files, or a dataset saved with save_to_disk, is given with --{folder_flag})"
            if folder_flag
            else ""
        )
        raise ValueError(
            f"{flag}={path!r} is a folder, not a file; pass one local .txt/.json/.jsonl/.csv/.parquet file{where}."
        )
    if not os.path.isfile(path):
        raise ValueError(f"{flag}={path!r} does not exist; pass a local .txt/.json/.jsonl/.csv/.parquet file.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _TEXT_SUFFIXES:
        raise ValueError(f"{flag}={path!r} has extension {suffix!r}; use one of {', '.join(_TEXT_SUFFIXES)}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{flag}={path!r} is empty; pass a file with at least one document.")
    if suffix != ".parquet":
        with open(path, "rb") as fh:
            head = fh.read(8192)
        try:
            if b"\x00" in head:
                raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.reason != "unexpected end of data":
                raise ValueError(
                    f"{flag}={path!r} is not UTF-8 text (binary data?); pass a text, JSON Lines or CSV file."
                ) from None


#: Files that make a folder loadable by `AutoTokenizer`: a fast tokenizer or its config, or the vocabulary files of the
#: slow tokenizers alone (a GPT-2 release: `vocab.json` + `merges.txt`; WordPiece `vocab.txt`; SentencePiece models),
#: which transformers resolves through the folder's `config.json`
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _looks_local(name: str) -> bool:
    """Whether a model / tokenizer reference names a local folder rather than a hub id."""
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or name.count("/") > 1


def _reference_holds(name: str, files: tuple[str, ...]) -> bool | None:
    """Whether `name` holds one of `files`: a local folder on disk, a hub id in the local cache when HF_HUB_OFFLINE is
    set; `None` for a hub id online (looked up when it is loaded)."""
    if _looks_local(name):
        path = os.path.expanduser(name)
        return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in files)
    from ..data.loading import hub_offline

    if not hub_offline():
        return None
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, f), str) for f in files)


def check_model_reference(
    name: str, flag: str, files: tuple[str, ...] = ("config.json",), what: str = "model"
) -> None:
    """A local folder must hold one of `files` (a model: `config.json`); offline, a hub id must already be in the
    local cache."""
    if _reference_holds(name, files) is not False:
        return
    if _looks_local(name):
        raise ValueError(f"{flag}={name!r} is not a {what} folder (no {' or '.join(files)} there); check the path.")
    raise ValueError(
        f"{flag}={name!r} is neither a local folder nor a cached hub {what}, and HF_HUB_OFFLINE is set; "
        f"pass a local {what} folder or download it first."
    )


def check_model_tokenizer_files(
    model_name_or_path: str | None, tokenizer_name: str | None, tokenizer_flag: bool
) -> None:
    """A recipe that loads its tokenizer from `--model_name_or_path` when `--tokenizer_name` is not given: a local
    model folder (or, with HF_HUB_OFFLINE set, a cached hub model) must hold a tokenizer, checked before any work.
    transformers failed only once the tokenizer was loaded, with a message naming neither flag nor the fix.
    `tokenizer_flag`: whether the recipe has `--tokenizer_name` (named in the fix)."""
    if not model_name_or_path or tokenizer_name:
        return
    name = model_name_or_path
    if _reference_holds(name, _TOKENIZER_FILES) is False:  # None: a hub model online, looked up when it is loaded
        raise ValueError(
            f"--model_name_or_path={name!r} holds no tokenizer (no {' or '.join(_TOKENIZER_FILES)}), and the recipe "
            "loads the tokenizer from there"
            + (" when --tokenizer_name is not given" if tokenizer_flag else "")
            + ": save the tokenizer the model was trained with into that folder (tokenizer.save_pretrained)"
            + (", or pass it with --tokenizer_name." if tokenizer_flag else ".")
        )


def check_tokenizer_fits_model(tokenizer, model_name_or_path: str | None, tokenizer_name: str | None = None) -> None:
    """A loaded model (`--model_name_or_path`) must embed every token of the tokenizer the recipe uses (from
    `--tokenizer_name`, or saved with the model): checked on the model's config when the tokenizer is loaded, before
    the earlier run's results are touched. A larger tokenizer failed inside training with a bare IndexError of the
    embedding (a device-side assert on a GPU)."""
    if not model_name_or_path:
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name_or_path)
    rows = getattr(config.get_text_config(), "vocab_size", None)
    if not isinstance(rows, int) or len(tokenizer) <= rows:
        return
    source = (
        f"--tokenizer_name {tokenizer_name!r}"
        if tokenizer_name
        else f"the tokenizer saved in --model_name_or_path {model_name_or_path!r}"
    )
    raise ValueError(
        f"{source} has {len(tokenizer)} tokens, but the model --model_name_or_path {model_name_or_path!r} embeds "
        f"{rows} (its vocab_size): token ids {rows} and up would index past its embedding. Pass the tokenizer the "
        "model was trained with"
        + (" (or drop --tokenizer_name to use the one saved with the model)" if tokenizer_name else "")
        + ", or resize the model's embedding to the tokenizer (model.resize_token_embeddings(len(tokenizer)), then "
        "model.save_pretrained)."
    )


#: Names transformers gives a learned absolute position table (GPT-2's `wpe`, BERT-style `position_embeddings`, OPT's
#: `embed_positions`)
_POSITION_TABLES = ("wpe", "position_embeddings", "embed_positions")


def set_missing_pad_token(tokenizer, fresh_model: bool, vocab_size=None) -> None:
    """Give a loaded tokenizer without a pad token one. For a loaded model, its EOS (the usual choice, which keeps the
    model's vocabulary). For a fresh model, a token of its own (`<|pad|>`, as the tokenizer the recipes build has),
    one row more in the fresh embedding: transformers' decoders build their input embedding with
    `padding_idx=config.pad_token_id`, a row that starts at zero and never gets a gradient, so padding with EOS froze the
    EOS input embedding, the end of every packed document, at zero for the whole run when the embeddings are untied
    (`--config_overrides tie_word_embeddings=false`). A fresh model whose embedding size is given
    (`--config_overrides vocab_size=N`, `vocab_size`) with no row left for a new token (N = the tokenizer's size,
    e.g. Llama's 32000) pads with EOS, as a loaded model does (logged): the pad id N would be past its embedding."""
    if tokenizer.pad_token is not None:
        return
    if fresh_model:
        import logging

        from ..data.tokenizer import PAD_TOKEN
        from ..utils.checks import is_int

        new_row = PAD_TOKEN not in tokenizer.get_vocab()
        if not (new_row and is_int(vocab_size) and vocab_size <= len(tokenizer)):
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
            return
        logging.getLogger(__name__).warning(
            f"The tokenizer has no pad token and --config_overrides vocab_size={vocab_size} leaves no embedding row "
            f"for one of its own ({len(tokenizer)} tokens): it pads with EOS, whose input embedding is then the "
            "embedding's padding_idx (zero, not trained where the embeddings are untied); set vocab_size above "
            f"{len(tokenizer)} to give the pad token a row."
        )
    tokenizer.pad_token = tokenizer.eos_token


def check_checkpoint_embeds_tokenizer(checkpoint: str | None, tokenizer_size: int) -> None:
    """Refuse to resume a fresh model's `checkpoint` whose embedding has fewer rows than the run's tokenizer has
    tokens (its last ids could not be embedded): a run started before 2026-12-07 with a tokenizer without a pad token
    padded with EOS, and the same tokenizer now gets a `<|pad|>` token of its own (`set_missing_pad_token`)."""
    if checkpoint is None or not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return
    import json

    from ..utils.checks import is_int

    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as fh:
        rows = json.load(fh).get("vocab_size")
    if is_int(rows) and is_int(tokenizer_size) and rows < tokenizer_size:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: the checkpoint's model has {rows} token embeddings "
            f"and the run's tokenizer {tokenizer_size} tokens, whose last ids the model could not embed. A run "
            "started before 2026-12-07 with a tokenizer without a pad token padded with EOS; a fresh model now gets a "
            "<|pad|> token of its own. Resume it with the release that started it, or start a new run from its "
            "weights (--model_name_or_path <checkpoint>)."
        )


def whole_trained_model(trainer):
    """The trained model for the main process's own work after training (final evaluation, lm-eval, generation,
    `save_pretrained`): call it on every process.

    Under FSDP (or DeepSpeed) the trained model's weights are sharded over the ranks and its forward gathers them from
    every rank: the main process running it alone waited for ranks that had gone on (a gloo "collective mismatch"
    abort, or a hang). There every rank takes part in gathering the whole state dict (a collective) and the main
    process gets a plain copy of the model holding it, in the trained model's dtype; otherwise the trained model
    itself."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return trainer.model
    from transformers import AutoModelForCausalLM

    state = trainer.accelerator.get_state_dict(trainer.model)  # every rank; the whole tensors on the main process
    if not trainer.is_world_process_zero():
        return trainer.model
    trained = trainer.accelerator.unwrap_model(trainer.model)
    # in the trained model's dtype: config.dtype can be unset (a bf16 checkpoint converted to layer-parallel pairs
    # has None), and from_config then built a float32 copy, evaluated and saved in float32
    whole = AutoModelForCausalLM.from_config(trained.config, dtype=trained.dtype)
    whole.load_state_dict(state)
    return whole.to(trainer.args.device)


def _launch_rank() -> int:
    """This process's global rank as the launcher set it in the environment (`RANK`, or MPI's), read as accelerate
    reads it (the first variable holding a non-negative integer), 0 without one. A value that is not an integer
    (`RANK=` left empty by a job script, which a single-process run ignores) is skipped: accelerate's
    `get_int_from_env` raised a bare `ValueError` on it, which stopped the recipe at this warning."""
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        value = os.environ.get(key, "").strip()
        if value.isascii() and value.isdigit():
            return int(value)
    return 0


def warn_embedded_corpus_tokenizer(data_flags: dict, vocab_size: int, fix: str | None = "--tokenizer_name") -> bool:
    """Warn (and return True) when the recipe builds its BPE on the embedded corpus (CPython's docs) while the data
    comes from the user (`data_flags`: the given ones among `--train_file`, `--dataset_name`, ..., flag -> value):
    such a tokenizer has not seen that data, so e.g. another language or domain falls back to short byte pieces.
    As transformers' `run_clm`, which refuses to train a tokenizer, the fix is `fix` naming a tokenizer for the data
    (`None`: a recipe without a tokenizer flag, `warmup`, says so instead)."""
    given = [f"{flag} {value!r}" for flag, value in data_flags.items() if value]
    if not given:
        return False
    import logging

    import torch.distributed as dist

    # said once per launch: by global rank 0 (the launcher's RANK before any process group exists)
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
    else:
        rank = _launch_rank()
    if rank != 0:
        return True

    advice = (
        f"Pass {fix} with a tokenizer made for your data (e.g. a Hub tokenizer, or one trained with "
        "`tokenizer.train_new_from_iterator` and saved with `save_pretrained`)."
        if fix is not None
        else "This recipe has no tokenizer flag: every arm trains on these same tokens."
    )
    logging.getLogger(__name__).warning(
        f"No tokenizer given: {' and '.join(given)} will be tokenized with the byte-level BPE (--vocab_size "
        f"{vocab_size}) that hf_ext trains on its embedded corpus (Python's documentation), not on your data. {advice}"
    )
    return True


def learned_position_limit(model) -> int | None:
    """How many positions `model`'s learned absolute position table holds (OPT's less its offset), or `None` for a
    model without one (RoPE, ALiBi: longer sequences run). Works on a meta-device model."""
    from torch import nn

    input_embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    limits = [
        module.num_embeddings - int(getattr(module, "offset", 0))
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding)
        and module is not input_embedding
        and name.rsplit(".", 1)[-1] in _POSITION_TABLES
        and module.num_embeddings > 0
    ]
    return min(limits) if limits else None


def check_learned_positions(
    model, what: str, block_size: int, prompt_tokens: int | None = None, max_new_tokens: int | None = None
) -> None:
    """Refuse a `--block_size` block, or the sample's prompt plus `--max_new_tokens`, longer than the learned position
    table of `model` (`what` names it; a meta-device build is enough), before any data is packed or any earlier
    result is touched: both failed with a bare `IndexError: index out of range in self` of the position embedding,
    a block at the first training step, the sample after training (no sample in the results)."""
    limit = learned_position_limit(model)
    if limit is None:
        return
    if block_size > limit:
        raise ValueError(
            f"--block_size {block_size} is longer than the {limit} learned absolute positions of {what}: its "
            f"position embedding has no row past {limit - 1}. Use --block_size <= {limit}."
        )
    # generate() feeds the prompt and every new token but the last: positions 0 .. prompt + new - 2
    if prompt_tokens is not None and max_new_tokens is not None and prompt_tokens + max_new_tokens - 1 > limit:
        raise ValueError(
            f"--max_new_tokens {max_new_tokens}: the sample's --prompt ({prompt_tokens} tokens) plus the new tokens "
            f"(all but the last fed back to the model) exceed the {limit} learned absolute positions of {what}; use "
            f"--max_new_tokens <= {max(limit - prompt_tokens + 1, 0)} or a shorter --prompt."
        )


def refuse_multiple_processes(script: str, why: str, instead: str = "") -> None:
    """For a recipe that runs in one process: raise `ValueError` on every rank when launched on several, before any
    argument parsing (which would start a process group), work or write. `why` says what would go wrong, `instead`
    how to scale the recipe up, if it can be."""
    n = launched_processes()
    if n > 1:
        raise ValueError(
            f"The {script} recipe runs in one process, but it was launched on {n} (torchrun --nproc_per_node / "
            f"accelerate launch --num_processes {n}): {why}. Launch it in one process: `hf-ext run {script} ...`, "
            f"`python -m hf_ext.recipes.{script} ...` or `accelerate launch --num_processes 1 -m "
            f"hf_ext.recipes.{script} ...` (from a checkout also `python scripts/{script}.py ...`)"
            f"{'; ' + instead if instead else ''}."
        )


def refuse_undistributed_launch(training_args, script: str) -> None:
    """Raise `ValueError` on every rank when the run was launched on several processes (`launched_processes`) but the
    Trainer would not train data-parallel (`training_args.parallel_mode` is not `DISTRIBUTED`): on a machine without
    an accelerator, `torchrun` / `accelerate launch` without `--use_cpu true` (`--cpu`) leave accelerate's distributed
    type at `NO`, so every rank trains the whole run alone, on the whole data, into the same folders."""
    from transformers.training_args import ParallelMode

    n = launched_processes()
    if n > 1 and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(
            f"The {script} recipe was launched on {n} processes, but the Trainer would not train them data-parallel "
            f"(parallel_mode {training_args.parallel_mode.value}, no accelerator found): each process would train "
            "the whole run alone, on the whole data, and write into the same --output_dir. On CPUs pass --use_cpu "
            "true (gloo ranks), or launch one process."
        )


def finish(result=None):
    """End a recipe run: all ranks meet, then the process group is torn down (no work left for interpreter exit)."""
    from ..utils.distributed import shutdown_distributed

    shutdown_distributed()
    return result


def whole_run_train_loss(trainer, this_call_mean: float) -> float | None:
    """Mean training loss over every optimizer step of the run, `1..global_step`, also after a resume, and the same
    on every rank of a data-parallel run (call it on every rank: it may all-reduce).

    `Trainer.train()` returns the mean over the steps of that call only, so a resumed run would report the mean of
    its last part. The steps before the resume are taken from the restored `log_history` (each logged loss is the
    mean since the previous log). For a checkpoint saved between two logs, the losses of its steps after the last
    log come from the loss window hf_ext's Trainers save with it (`hf_ext.utils.resume.LossWindowResumeMixin`; the
    first log after the resume covers them); without it (a plain `Trainer`, an older checkpoint) they were never
    recorded and `None` is returned.

    On several ranks each logged loss is the mean over the ranks (transformers gathers it), but the steps after the
    last log (when `--logging_steps` does not divide the run) enter `training_loss` with this rank's own losses; that
    remainder is averaged over the ranks here, so the result equals one process at the same global batch.
    """
    from ..utils.resume import restored_loss_window

    first = resumed_at_step(trainer)
    last = int(trainer.state.global_step)
    window = restored_loss_window(trainer) if first > 0 else None
    # `start`: where the first log of this call starts its mean; `carried`: the restored loss sum of steps start+1..first
    start, carried = window if window is not None else (first, 0.0)
    if not math.isfinite(carried):
        return carried  # a non-finite loss before the checkpoint: so is the run's mean
    args = getattr(trainer, "args", None)
    if getattr(args, "world_size", 1) > 1 and last > first:
        this_call_mean = _ranks_mean_of_this_call(trainer, this_call_mean, first, last, start, carried)
    if first <= 0:
        return this_call_mean
    total, previous = 0.0, 0
    for entry in trainer.state.log_history:
        if "loss" in entry and "step" in entry and entry["step"] <= first:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    if previous != start:
        return None
    return (total + carried + this_call_mean * (last - first)) / max(last, 1)


def _ranks_mean_of_this_call(
    trainer, this_call_mean: float, first: int, last: int, start: int | None = None, carried: float = 0.0
) -> float:
    """The mean loss of steps `first+1..last` with the unlogged tail averaged over the ranks (see
    `whole_run_train_loss`). Every rank takes the same branch: the log history and the step counts are shared. With
    a restored loss window the first log of the call covers steps `start+1..`, `carried` being the (ranks' mean) sum
    of the losses of steps `start+1..first`."""
    start = first if start is None else start
    logged, previous = 0.0, start
    for entry in trainer.state.log_history:
        if "loss" in entry and "step" in entry and first < entry["step"] <= last:
            logged += entry["loss"] * (entry["step"] - previous)  # the gathered sum since the previous log
            previous = entry["step"]
    if previous == last:  # logged at the last step: nothing rank-local in the mean
        return this_call_mean
    import torch

    tail = this_call_mean * (last - first) + carried - logged  # this rank's losses after the last log
    tail = torch.tensor(tail, dtype=torch.float64, device=trainer.args.device)
    tail = trainer.accelerator.reduce(tail, reduction="mean").item()
    return (logged + tail - carried) / (last - first)


def resumed_at_step(trainer) -> int:
    """The optimizer step the last `train()` call started from (0 for a fresh run)."""
    return int(getattr(trainer, "_initial_global_step", 0) or 0)


def changed_from_default(args, names) -> list[str]:
    """The fields among `names` whose value differs from the dataclass default (set on the command line): the
    recipes refuse such a flag by name where the run would ignore it."""
    defaults = {}
    for f in dataclasses.fields(args):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return [name for name in names if getattr(args, name) != defaults[name]]


@contextlib.contextmanager
def removed_if_refused(folder: str):
    """Around a recipe run that creates its output folder `folder` before a refusal can still come (the writability
    check of `--output_dir`, transformers' `Trainer` when it is constructed; a resume's schedule check needs the
    Trainer): where the block raises, the folders it created for `folder` (`folder` and the missing parents above it)
    are removed again while they are empty, so a refused run leaves no empty folder behind. A folder that existed
    before, or that holds a file (a checkpoint, a run record), is kept."""
    folder = os.path.abspath(folder)
    top = None  # the outermost folder of `folder`'s path that does not exist yet
    probe = folder
    while not os.path.lexists(probe):
        top = probe
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        yield
    except BaseException:
        if top is not None:
            path = folder
            while True:
                try:
                    os.rmdir(path)  # only an empty folder: never a file another process wrote meanwhile
                except OSError:
                    break
                if path == top:
                    break
                path = os.path.dirname(path)
        raise


def clear_previous_results(output_dir: str, names, resuming: bool = False) -> list[str]:
    """Remove the result files an earlier run of this recipe left in `output_dir`, before a fresh run does any work.

    A run writes its result files at its end; without this, a rerun into the same folder that is interrupted, or that
    writes fewer files (another mode, a step skipped), leaves the older run's files beside its own, each looking
    current. Only the recipe's own report files named in `names` (paths relative to `output_dir`) are removed: never
    checkpoints, saved models or other files. A resumed run continues the run that wrote them, so nothing is removed
    (`resuming`), except the temporary files a killed atomic write of one of them left (`.<name>.*.tmp`, never read),
    which go in both cases. Call on the main process only. Returns the removed names.
    """
    import glob

    for name in names:
        folder, base = os.path.split(os.path.join(output_dir, name))
        for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(base)}.*.tmp")):
            if os.path.isfile(stale):
                os.remove(stale)
    if resuming:
        return []
    removed = []
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
            removed.append(name)
    if removed:
        print(f"removed the results of an earlier run from {output_dir}: {', '.join(removed)}", flush=True)
    return removed


def _record_flag_value(value) -> str:
    """A recorded flag value as it is written on the command line (a list as its space-separated entries)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(_record_flag_value(v) for v in value)
    return str(value)


def _is_path_flag(name: str) -> bool:
    """Flags whose value may name a local file or folder (compared as resolved paths in a run record)."""
    return name.endswith(("_file", "_name_or_path")) or name in ("dataset_name", "tokenizer_name")


#: Flags whose value is a `name=path,name=path` list of local files (grape's --target_files): each path is compared
#: resolved, the names as given.
_PATH_LIST_FLAGS = ("target_files",)


def _resolved_path(value):
    """`value` as its resolved absolute path when it names an existing local file or folder, else unchanged."""
    return os.path.realpath(value) if isinstance(value, str) and value and os.path.exists(value) else value


def _resolved_path_list(value):
    """A `name=path,...` list with every path resolved ([`_resolved_path`]) and its names and paths stripped, as the
    recipes parse it (empty items dropped); a value that is no such list is returned unchanged."""
    if not isinstance(value, str):
        return value
    items = []
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, path = item.partition("=")
        if not sep:
            return value
        items.append(f"{name.strip()}={_resolved_path(path.strip())}")
    return ",".join(items)


def _resolved_record(record: dict) -> dict:
    """`record` with every path flag that names an existing local file or folder as its resolved absolute path (each
    path of a `name=path` list flag too), so the same file given as a relative or an absolute path (or from another
    working directory) is the same value, and the same relative string naming another file is not."""
    return {
        k: _resolved_path_list(v) if k in _PATH_LIST_FLAGS else _resolved_path(v) if _is_path_flag(k) else v
        for k, v in record.items()
    }


def _comparable_record(record: dict, none_means: dict | None = None) -> dict:
    """`record` with the values that spell one setting in several ways made one: `config_overrides` as the overrides
    it parses to (`"b=2, a=1"` is `"a=1,b=2"`, an empty one none), and a `num_key_value_heads` of None (the default:
    one per attention head) as the record's `num_attention_heads`. A resume that gave a recorded flag another spelling
    of its value was refused as another run."""
    out = dict(record)
    overrides = out.get("config_overrides")
    if isinstance(overrides, str):
        import json as _json

        from .pretrain import parse_config_overrides

        try:
            parsed = parse_config_overrides(overrides)
        except ValueError:  # not key=value items: compared as written
            parsed = None
        if parsed is not None:
            out["config_overrides"] = _json.dumps(parsed, sort_keys=True) if parsed else None
    if out.get("num_key_value_heads", 0) is None and "num_attention_heads" in out:
        out["num_key_value_heads"] = out["num_attention_heads"]
    for key, value in (none_means or {}).items():  # a recipe's flag whose default (None) is this value
        if key in out and out[key] is None:
            out[key] = value
    return out


def _read_run_record(path: str) -> dict:
    """The run record `path` (a JSON object); an unreadable one raises `ValueError` naming it."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--resume_from_checkpoint: {path} (the flags of the interrupted run) cannot be read ({err}); restore it, "
            "or start afresh in another --output_dir."
        ) from err
    return saved


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def checkpoint_run_folder(checkpoint: str, output_dir: str, record_name: str, run_of=None) -> str:
    """The folder of the run that saved `checkpoint`, where its record `record_name` is. Of the folder that holds the
    checkpoint as named and the one that holds its resolved path (they differ for a link), the first that holds the
    record, the named one first when the link is named as one of its checkpoints (`checkpoint-N`): a `checkpoint-N`
    of a run moved to other storage and linked back into the run folder is that run's, and a link of another name to
    a run's checkpoint (`best -> RUN/checkpoint-1`) names that run, also when it is kept in another run's folder
    (that run's record would check a checkpoint it did not train). Where neither holds a record (a run started before
    records were written), the named folder when it is `output_dir`, else the resolved one. `run_of` maps a
    checkpoint's parent folder to its run folder (default: the parent itself)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    run_of = run_of if run_of is not None else (lambda parent: parent)
    named = run_of(os.path.dirname(os.path.abspath(checkpoint)))
    resolved = run_of(os.path.dirname(os.path.realpath(checkpoint)))
    linked_back = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", os.path.basename(os.path.abspath(checkpoint)))
    for folder in (named, resolved) if linked_back else (resolved, named):
        if os.path.isfile(os.path.join(folder, record_name)):
            return folder
    return named if _same_folder(named, output_dir) else resolved


def refuse_checkpoints_of_another_run(checkpoint: str, run_folder: str, folder: str, checkpoint_folders=None) -> None:
    """A resume of `checkpoint`, a checkpoint of the run in `run_folder`, into the output folder `folder` of another
    path: raise `ValueError` when one of this run's checkpoint folders (`checkpoint_folders`, default `[folder]`)
    already holds a complete `checkpoint-N`. Those are another run's (the run `folder`'s record is of): the resumed run
    would save its checkpoints beside them, and a later `--resume_from_checkpoint` of `folder` would pick the newest of
    either run, checked against one run's record. Nothing to check for a resume within `run_folder` itself."""
    if _same_folder(run_folder, folder):
        return
    from ..utils.resume import last_complete_checkpoint

    for sub in checkpoint_folders if checkpoint_folders is not None else [folder]:
        found = last_complete_checkpoint(sub)
        if found is not None:
            raise ValueError(
                f"--resume_from_checkpoint: {checkpoint} (a checkpoint of the run in {run_folder!r}) is resumed into "
                f"--output_dir {folder!r}, which holds checkpoints of another run ({found}): this run's would be "
                "saved beside them, and a later --resume_from_checkpoint of that folder would continue the newest of "
                "either run. Resume into an --output_dir without checkpoint-N folders (another one, or delete them), "
                f"or into {run_folder!r} itself."
            )


def write_run_record(
    folder: str,
    name: str,
    record: dict,
    resumed_from: str | None = None,
    run_folder: str | None = None,
    checkpoint_folders=None,
) -> None:
    """Record what a resume of the run training in `folder` must keep, as `folder/name` (written atomically; local
    paths recorded resolved). Call on the main process only.

    A fresh run (`resumed_from` None) writes `record` (flag name -> value). A resume within the checkpoint's own run
    folder keeps that folder's record as it is (a run started before the record existed records nothing it could not
    check). A resume of `resumed_from`, a checkpoint of the run in another folder (`run_folder`, default the
    checkpoint's parent folder; already checked against that run's record by [`check_run_record`]), makes `folder`
    that run's: refused when `folder` holds checkpoints of another run (`checkpoint_folders`, see
    [`refuse_checkpoints_of_another_run`]); then `folder/name` becomes the checked record (its values resolved), so
    later resumes of `folder` are checked against the run its checkpoints continue; where that run has no record, an
    earlier run's record in `folder` is removed (with a warning), as it would check later resumes against another
    run's flags."""
    import logging

    from ..utils.io import atomic_write_json

    path = os.path.join(folder, name)
    if resumed_from is None:
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(path, _resolved_record(record))
        return
    if run_folder is None:
        run_folder = checkpoint_run_folder(resumed_from, folder, name)
    if _same_folder(run_folder, folder):
        return
    refuse_checkpoints_of_another_run(resumed_from, run_folder, folder, checkpoint_folders)
    origin = os.path.join(run_folder, name)
    if os.path.isfile(origin):
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(path, _resolved_record(_read_run_record(origin)))
    elif os.path.isfile(path) or os.path.islink(path):
        os.remove(path)
        logging.getLogger(__name__).warning(
            "--resume_from_checkpoint: removed %s, an earlier run's record: this run continues %s, whose run folder "
            "%s has no %s (the run started before hf_ext recorded it), so later resumes of %s are unchecked too: make "
            "sure their flags are the interrupted run's.",
            path,
            resumed_from,
            run_folder,
            name,
            folder,
        )


#: The run record each recipe writes into its run folder (file name -> recipe), for telling one recipe's run from another's
RECIPE_RUN_RECORDS = {
    "pretrain_run.json": "pretrain",
    "grape_run.json": "grape",
    "metadata_run_data.json": "metadata_pretrain",
    "layer_parallel_run.json": "layer_parallel",
    "neuralgrok_run.json": "neuralgrok",
    "warmup_run.json": "warmup",
    "hyperinf_run_data.json": "hyperinf",
}


def _records_of_other_recipes(folder: str, name: str) -> list[tuple[str, str]]:
    """`(record file, recipe)` of every other recipe's run record in `folder` (`name`: this recipe's record)."""
    own = RECIPE_RUN_RECORDS.get(name, "this recipe")
    return [
        (record, recipe)
        for record, recipe in RECIPE_RUN_RECORDS.items()
        if record != name and recipe != own and os.path.isfile(os.path.join(folder, record))
    ]


def refuse_run_of_another_recipe(folder: str, name: str) -> None:
    """On resume, before any work: `folder`, the run folder of the checkpoint, has no record `name` of this recipe
    but holds another recipe's (`RECIPE_RUN_RECORDS`): the checkpoint is that recipe's, whose trainer state (GRAPE's
    mixture, the metadata or NeuralGrok state, ...) this recipe would not read, and it resumed with only the
    "started before hf_ext recorded it" warning, continuing another recipe's run on this recipe's data and report."""
    if os.path.isfile(os.path.join(folder, name)):
        return
    own = RECIPE_RUN_RECORDS.get(name, "this recipe")
    for record, recipe in _records_of_other_recipes(folder, name):
        raise ValueError(
            f"--resume_from_checkpoint: the checkpoint is of a `{recipe}` run ({folder!r} holds its record "
            f"{record}), not of a `{own}` run: its trainer state and data are that recipe's, and resuming it here "
            f"would continue that run with this recipe's. Resume it with `hf-ext run {recipe}`, or start a new "
            f"`{own}` run from its weights (--model_name_or_path <checkpoint>, without --resume_from_checkpoint)."
        )


def refuse_output_dir_of_another_recipe(output_dir: str, name: str) -> None:
    """A fresh run, before any work: `output_dir` holds another recipe's run (its record, `RECIPE_RUN_RECORDS`; this
    recipe's is `name`). This run would write its model, tokenizer and results over or beside that run's (a `grape`
    run into a finished `pretrain` folder replaced its model and left pretrain_results.json describing the old one
    beside it), so a later resume or reader would take one run's files for the other's."""
    own = RECIPE_RUN_RECORDS.get(name, "this recipe")
    for record, recipe in _records_of_other_recipes(output_dir, name):
        raise ValueError(
            f"--output_dir {output_dir!r} holds a `{recipe}` run (its record {record}): this `{own}` run would "
            f"write its model and results over and beside that run's, mixing the two. Pick another --output_dir "
            f"(to start from that run's model, pass it as --model_name_or_path), or delete that run's files first."
        )


def check_run_record(folder: str, name: str, now: dict, shapes: str, none_means: dict | None = None) -> None:
    """On resume, before any work: the interrupted run's record (`folder/name`, written by [`write_run_record`] when it
    started) must hold `now`'s values. A difference raises `ValueError` naming each flag, the interrupted run's value
    and the flags that continue it; an unreadable record is an error too. A run started before hf_ext wrote the record
    (no file), or a flag the record lacks, is resumed with a warning: it cannot be checked. `shapes`: what those flags
    shape, for the message (e.g. "the equations, their split and the model"). Local paths are compared resolved, on
    both sides (a record written before they were recorded resolved holds them as given). `none_means`: flags whose
    None (left unset) the recipe resolves to a fixed value, compared as that value (pretrain's `--intermediate_size`:
    unset is 384, so `--intermediate_size 384` continues a run that left it unset)."""
    import logging

    log = logging.getLogger(__name__)
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        refuse_run_of_another_recipe(folder, name)
        log.warning(
            "--resume_from_checkpoint: %s has no %s (the interrupted run started before hf_ext recorded it), so %s "
            "are resumed unchecked: make sure they are the interrupted run's.",
            folder,
            name,
            ", ".join("--" + k for k in now),
        )
        return
    saved = _resolved_record(_read_run_record(path))
    now = _resolved_record(now)
    unrecorded = [k for k in now if k not in saved]
    if unrecorded:
        log.warning(
            "--resume_from_checkpoint: %s records no %s (written before hf_ext recorded them), so they are resumed "
            "unchecked: make sure they are the interrupted run's.",
            path,
            ", ".join("--" + k for k in unrecorded),
        )
    same_saved, same_now = _comparable_record(saved, none_means), _comparable_record(now, none_means)
    changed = [k for k in now if k in saved and same_saved[k] != same_now[k]]
    if changed:
        diffs = "; ".join(
            f"--{k} {_record_flag_value(now[k])} (the interrupted run used {_record_flag_value(saved[k])})"
            for k in changed
        )
        fix = " ".join(f"--{k} {_record_flag_value(saved[k])}" for k in changed)
        raise ValueError(
            f"--resume_from_checkpoint: this run differs from the interrupted run in {folder!r}: {diffs}. Its "
            f"checkpoints were trained with {shapes} those flags define; the remaining steps would continue it with "
            f"other ones and report the mix as one run. Resume with {fix}, or start afresh in another --output_dir."
        )


def check_meta_build(config, attn_implementation: str | None, what: str) -> None:
    """Build a model of `config` on the meta device (no memory, no data), so that transformers' own checks of the
    config and of `--attn_implementation` (unknown kernel, kernel package not installed) run before any work.
    `what` names the model in the error (e.g. "fresh llama", "source")."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    except (ValueError, ImportError) as err:
        if isinstance(err, ImportError) or "attn_implementation" in str(err):  # kernel unknown or not installed
            raise ValueError(
                f"--attn_implementation {attn_implementation!r} cannot be used with the {what} model here: {err}"
            ) from None
        raise ValueError(f"The {what} model cannot be built from these flags: {err}") from None


#: Files holding a saved model's weights (`save_pretrained`: whole, sharded with an index, or a peft adapter).
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


def weight_files(folder: str) -> dict[str, tuple]:
    """The model weight files in `folder` with their identity `(inode, size, mtime in ns)`; empty when none (or no
    folder). Taken before and after a save, it tells whether the save wrote a model there
    ([`refuse_model_not_written`])."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    out = {}
    for name in names:
        if _WEIGHT_FILE.match(name):
            st = os.stat(os.path.join(folder, name))
            out[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def model_not_written(folder: str, before: dict[str, tuple]) -> str | None:
    """Why `folder` does not hold a model this run just saved (no weight file, or only ones unchanged since `before`,
    i.e. an earlier run's), or `None` when a save wrote one. Call on the process that saved."""
    after = weight_files(folder)
    if any(before.get(name) != identity for name, identity in after.items()) and os.path.isfile(
        os.path.join(folder, "config.json")
    ):
        return None
    earlier = f" (its {', '.join(sorted(after))} are an earlier run's, unchanged by this one)" if after else ""
    return (
        f"The trained model was not saved to {folder}{earlier}: save_model wrote no weights there, so reloading the "
        "folder would evaluate another model than this run's. Under FSDP use a Trainer whose save_model gathers the "
        "full state dict (hf_ext's Fp8Trainer does) or fsdp_state_dict_type: FULL_STATE_DICT in the accelerate "
        "config."
    )
