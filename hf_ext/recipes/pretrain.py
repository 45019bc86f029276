"""Pretrain a causal LM (default: a tiny model from config) on the embedded corpus or your data; reload, eval, sample.

Run as `python scripts/pretrain.py`, `accelerate launch scripts/pretrain.py` or `hf-ext run pretrain`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from ._common import validation_split_seed_field

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this pretrained model (folder or hub id) instead of a fresh one."}
    )
    model_type: str = field(
        default="fog",
        metadata={
            "help": "Architecture of a fresh model: fog (FP8-stable FOG recipe, FogConfig.fog), llama, or any "
            "AutoConfig model type. With fog, --intermediate_size is the SwiGLU width and the ungated xIELU MLP gets "
            "1.5x it, rounded up to a multiple of 16 (equal parameter count for a multiple of 32); intermediate_size in "
            "--config_overrides is the real MLP width."
        },
    )
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of a fresh model."})
    intermediate_size: int | None = field(
        default=None,
        metadata={
            "help": "MLP width of a fresh model (default 384; an architecture with a fixed width, such as bloom, "
            "refuses the flag)."
        },
    )
    num_hidden_layers: int = field(default=4, metadata={"help": "Layers of a fresh model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of a fresh model."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "KV heads (GQA); default = heads."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Extra config fields for a fresh model, as 'key=value,key=value' (values parsed as JSON); a size "
            "flag given on the command line (--hidden_size, ...) may not be set here to another value."
        },
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel: sdpa, eager or another transformers kernel it has."}
    )
    fp8_backend: str = field(
        default="torchao",
        metadata={
            "help": "Run every transformer-block linear in FP8 (LM head and embeddings stay high precision): "
            "none | torchao | te (Transformer Engine, CUDA) | emulated (pure torch numerics reference). Under "
            "`accelerate launch --mixed_precision fp8` accelerate converts the model instead (torchao only)."
        },
    )
    fp8_recipe: str = field(
        default="tensorwise", metadata={"help": "torchao recipe: tensorwise | rowwise | rowwise_with_gw_hp."}
    )
    fp8_scaling: str = field(
        default="delayed", metadata={"help": "emulated backend scaling: delayed (amax history 1024) | current."}
    )
    fp8_attention: bool = field(
        default=False,
        metadata={
            "help": "Also run the attention BMMs (QK^T, PV) in FP8: te (Transformer Engine's DotProductAttention, "
            "fp8_dpa) or emulated."
        },
    )
    fp8_monitor_steps: int = field(
        default=25,
        metadata={"help": "Measure activation kurtosis every N steps (Fp8HealthCallback); 0 turns the monitor off."},
    )
    fp8_monitor_action: str = field(
        default="warn",
        metadata={
            "help": "What the monitor does on a kurtosis alert: warn | stop | rollback (to the last checkpoint with "
            "half the learning rate; needs --save_strategy steps)."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset or local dataset folder; default: the embedded offline corpus."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "Local .txt/.json/.jsonl/.csv/.parquet file."})
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Local validation file, used whatever the training data (default: the corpus' held-out split, "
            "the dataset's validation/test split, or 5% of --train_file)."
        },
    )
    validation_split_seed: int = validation_split_seed_field()
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    block_size: int = field(
        default=128,
        metadata={
            "help": "Tokens per training block (> 0; at most the positions of a model with a learned position "
            "table, e.g. gpt2's n_positions)."
        },
    )
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to load instead of building one."})
    max_eval_blocks: int | None = field(default=256, metadata={"help": "Evaluate on at most this many blocks."})
    prompt: str = field(default="The return value of", metadata={"help": "Prompt for the sample continuation."})
    max_new_tokens: int = field(
        default=40,
        metadata={
            "help": "Tokens generated for the sample continuation (with the --prompt, at most one more than the "
            "positions of a model with a learned position table: the last new token is not fed back)."
        },
    )


#: `--lr_scheduler_kwargs` when `--lr_scheduler_type` is `warmup_stable_decay` (the default) and none are given: the FOG
#: reference's 1-sqrt cooldown over the last 20% of the run to 0
WSD_DEFAULT_KWARGS = {"num_decay_steps": 0.2, "decay_type": "1-sqrt", "min_lr_ratio": 0.0}


@dataclass
class PretrainTrainingArguments(TrainingArguments):
    output_dir: str = field(default="outputs/pretrain", metadata={"help": "Where the model and tokenizer are saved."})
    max_steps: int = field(default=400, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device per step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per device per eval step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (int) or fraction of max_steps."})
    lr_scheduler_type: str = field(
        default="warmup_stable_decay",
        metadata={"help": "Learning-rate schedule (transformers' names); default WSD as the FOG reference pretrains."},
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "JSON object of the schedule's options, passed as given. Default: for warmup_stable_decay "
            '\'{"num_decay_steps": 0.2, "decay_type": "1-sqrt", "min_lr_ratio": 0.0}\' (the reference: a 1-sqrt '
            "cooldown over the last 20% of the run; a float num_decay_steps in (0, 1) is a fraction of the run), "
            "for the other schedules none."
        },
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy during training."})
    eval_strategy: str = field(default="no", metadata={"help": "Evaluation strategy during training."})

    def __post_init__(self):
        super().__post_init__()
        # the reference's WSD options apply to warmup_stable_decay only (they were passed to every schedule, and
        # `--lr_scheduler_type cosine` failed once the data was loaded)
        if (
            self.lr_scheduler_kwargs is None
            and SchedulerType(self.lr_scheduler_type) == SchedulerType.WARMUP_STABLE_DECAY
        ):
            self.lr_scheduler_kwargs = dict(WSD_DEFAULT_KWARGS)


def parse_config_overrides(text: str | None) -> dict:
    """Parse 'a=1,b=true,c=xielu' into a dict (values as JSON where possible). A comma inside a JSON list, object or
    string value (`layer_types=["full_attention","sliding_attention"]`) belongs to the value. A key given twice is
    refused (the last value won silently, while a field given under its alias too was refused)."""
    out: dict = {}
    if not text:
        return out
    for item in _split_top_level_commas(text):
        if "=" not in item:
            raise ValueError(f"--config_overrides item {item!r} is not key=value.")
        key, value = item.split("=", 1)
        if key.strip() in out:  # the last one silently won
            raise ValueError(f"--config_overrides sets {key.strip()!r} twice; keep one.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError as err:
            if value.strip().startswith(("[", "{")):  # a Python literal (['a','b']) was kept as a string
                raise ValueError(
                    f"--config_overrides {key.strip()}={value.strip()} is not a JSON list or object ({err}); write "
                    'it in JSON: strings in double quotes, e.g. layer_types=["full_attention","sliding_attention"].'
                ) from None
            out[key.strip()] = value.strip()
    return out


def _split_top_level_commas(text: str) -> list[str]:
    """`text` cut at the commas outside JSON brackets and double-quoted strings."""
    items, start, depth, quoted, escaped = [], 0, 0, False, False
    for i, char in enumerate(text):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def _config_field_names(reference, overrides: dict) -> dict:
    """`overrides` with each key that is one of transformers' aliases of the config (its `attribute_map`, e.g. gpt2's
    `hidden_size` for `n_embd`) under the field it names, as the config itself stores it; both names of one field
    are refused."""
    renamed = getattr(reference, "attribute_map", {}) or {}
    fields = set(reference.to_dict())
    out: dict = {}
    given: dict = {}  # field -> the name it was given under
    for key, value in overrides.items():
        field_name = renamed[key] if key in renamed and key not in fields else key
        if field_name in out:
            alias = key if key != field_name else given[field_name]
            raise ValueError(
                f"--config_overrides sets {field_name!r} twice: {alias!r} is the {type(reference).__name__}'s alias of "
                f"{field_name!r}; keep one."
            )
        out[field_name], given[field_name] = value, key
    return out


def check_config_overrides(model_args: ModelArguments, block_size: int | None = None) -> None:
    """`--config_overrides` may only set fields the fresh model's config has, with values of the field's type, not a
    size that a flag given on the command line sets otherwise, nor fewer positions than a `block_size` block."""
    overrides = parse_config_overrides(model_args.config_overrides)
    if not overrides:
        return
    if model_args.model_name_or_path:
        raise ValueError("--config_overrides applies to a fresh model only; drop it or drop --model_name_or_path.")
    from transformers import AutoConfig

    if model_args.model_type == "fog":
        from ..models.fog import FogConfig

        reference = FogConfig.fog(swiglu_intermediate_size=model_args.intermediate_size or DEFAULT_INTERMEDIATE_SIZE)
    else:
        try:
            reference = AutoConfig.for_model(model_args.model_type)
        except ValueError as err:
            raise ValueError(f"--model_type {model_args.model_type!r} is not a known architecture ({err}).") from None
    known = set(reference.to_dict())
    overrides = _config_field_names(reference, overrides)  # gpt2's hidden_size=... sets n_embd, as transformers does
    width_twice = "intermediate_size" in overrides and model_args.intermediate_size is not None
    if model_args.model_type == "fog" and width_twice:
        raise ValueError(
            f"--config_overrides intermediate_size={overrides['intermediate_size']} and --intermediate_size "
            f"{model_args.intermediate_size} both set the MLP width; --intermediate_size is the SwiGLU width (the xIELU "
            "MLP gets 1.5x it), intermediate_size in --config_overrides the MLP's real width: keep one."
        )
    from ._common import changed_from_default

    # the overrides are applied over the flags: a flag given too would be silently ignored (fog's intermediate_size
    # is checked above: there the two name different widths); a flag may set a field of another name (gpt2: n_embd)
    renamed = getattr(reference, "attribute_map", {})
    flagged = [
        f
        for f in FRESH_MODEL_FLAGS
        if f != "model_type" and (f != "intermediate_size" or model_args.model_type != "fog")
    ]
    for name in changed_from_default(model_args, flagged):
        fields = {name, renamed.get(name, name), *(_INTERMEDIATE_ALIASES if name == "intermediate_size" else ())}
        key = next((k for k in overrides if k in fields), None)
        if key is not None and overrides[key] != getattr(model_args, name):
            raise ValueError(
                f"--config_overrides {key}={overrides[key]!r} and --{name} {getattr(model_args, name)} both set the "
                f"model's {name}; keep one."
            )
    positions = {"max_position_embeddings", renamed.get("max_position_embeddings", "max_position_embeddings")}
    for key in positions & set(overrides):
        value = overrides[key]
        if block_size is not None and isinstance(value, int) and not isinstance(value, bool) and value < block_size:
            raise ValueError(
                f"--config_overrides {key}={value} gives the model fewer positions than a --block_size {block_size} "
                f"block; raise {key} to at least {block_size} or lower --block_size."
            )
    optional = _optional_fields(type(reference))
    for key, value in overrides.items():
        if key not in known:
            close = sorted(k for k in known if key.lower() in k.lower() or k.lower() in key.lower())[:5]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            rope = getattr(reference, "rope_parameters", None)
            if key in ("rope_theta", "rope_scaling") and "rope_parameters" in known and isinstance(rope, dict):
                hint = (
                    " This transformers version keeps the RoPE settings (rope_theta, the scaling) in rope_parameters"
                )
                current = json.dumps(rope, separators=(",", ":"))
                if any(isinstance(v, dict) for v in rope.values()):  # one entry per layer type (gemma3)
                    hint += (
                        f", here one entry per layer type ({', '.join(k for k, v in rope.items() if isinstance(v, dict))}"
                        f"; default rope_parameters={current}): pass that value with rope_theta / the scaling set in "
                        "the entries of the layer types to change."
                    )
                else:  # every legacy RoPE override given, merged into the default (a null rope_scaling: none)
                    scaling = overrides.get("rope_scaling")
                    given = {**(scaling if isinstance(scaling, dict) else {})}
                    if "type" in given:  # transformers 4's name of rope_type in rope_scaling
                        given.setdefault("rope_type", given["type"])
                        del given["type"]
                    if "rope_theta" in overrides:
                        given["rope_theta"] = overrides["rope_theta"]
                    hint += f": pass rope_parameters={json.dumps({**rope, **given}, separators=(',', ':'))}."
            raise ValueError(
                f"--config_overrides sets {key!r}, which a {model_args.model_type} config does not have.{hint}"
            )
        default = getattr(reference, key, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--config_overrides {key}={value} is not a finite number.")
        if value is None and key in optional:  # e.g. FOG's softmax_scale=null (1/sqrt(head_dim)), input_upscale=null
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int | float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok and isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                ok = value.is_integer()
            if ok and value < 0 <= default:  # a field whose default is negative (FOG's xielu_eps) takes negatives
                raise ValueError(f"--config_overrides {key}={value} must not be negative.")
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ValueError(
                f"--config_overrides {key}={value!r} has the wrong type: the config expects "
                f"{type(default).__name__} (default {default!r})."
            )


def _optional_fields(config_cls) -> set[str]:
    """Fields of a config class annotated as optional (`float | None`): `null` is one of their values."""
    out = set()
    for klass in reversed(config_cls.__mro__):
        for name, annotation in getattr(klass, "__annotations__", {}).items():
            text = annotation if isinstance(annotation, str) else repr(annotation)
            if "None" in text or "Optional" in text:
                out.add(name)
    return out


#: Flags that size a fresh model; a model loaded with --model_name_or_path keeps its own config.
FRESH_MODEL_FLAGS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
)  # fmt: skip


def check_ignored_model_flags(model_args: ModelArguments, data_args) -> None:
    """Refuse, by name, a model or tokenizer flag set on the command line that the run would ignore (`model_args`: any
    recipe's model arguments; the fresh-model flags it has are checked; a recipe without --model_name_or_path passes
    its one arguments dataclass as both)."""
    from ._common import changed_from_default

    base = getattr(model_args, "model_name_or_path", None)
    if base:
        for name in changed_from_default(model_args, [f for f in FRESH_MODEL_FLAGS if hasattr(model_args, f)]):
            raise ValueError(
                f"--{name} sizes a fresh model, but --model_name_or_path={base!r} is loaded with its own config, so it "
                f"would be ignored; drop --{name} (or --model_name_or_path to train a fresh model)."
            )
    loaded = data_args.tokenizer_name or base
    if loaded and changed_from_default(data_args, ["vocab_size"]):
        loaders = "/".join(
            f"--{n}" for n, a in (("tokenizer_name", data_args), ("model_name_or_path", model_args)) if hasattr(a, n)
        )
        raise ValueError(
            f"--vocab_size sizes the tokenizer built on the fly, but the tokenizer of {loaded!r} is loaded, so it "
            f"would be ignored; drop --vocab_size (or {loaders})."
        )
    if data_args.dataset_config_name and not data_args.dataset_name:
        raise ValueError(
            f"--dataset_config_name={data_args.dataset_config_name!r} selects a config of --dataset_name, which is "
            "not set; drop it or pass --dataset_name."
        )


def validate_args(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Check arguments before any data is loaded or anything is written."""
    from ..data.loading import check_dataset_name
    from ..utils.io import ensure_writable_dir
    from ._common import check_model_tokenizer_files, check_vocab_size, refuse_undistributed_launch

    refuse_undistributed_launch(training_args, "pretrain")  # N ranks that would each train alone
    check_ignored_model_flags(model_args, data_args)
    check_model_tokenizer_files(model_args.model_name_or_path, data_args.tokenizer_name, tokenizer_flag=True)
    check_vocab_size(data_args.vocab_size, data_args.tokenizer_name or model_args.model_name_or_path)
    if data_args.block_size < 2:  # a one-token block has no next token: every loss NaN, eval refused after training
        raise ValueError(
            f"--block_size must be at least 2 tokens (one to read, one to predict), got {data_args.block_size}."
        )
    check_dataset_name(  # a path that is no folder, or a Hub name offline
        data_args.dataset_name,
        "Drop --dataset_name to train on the embedded offline corpus, or pass --train_file with a local file.",
    )
    if model_args.model_name_or_path is None and model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    if not data_args.prompt:
        raise ValueError("--prompt must be non-empty: the sample continuation is generated from it.")
    check_config_overrides(model_args, data_args.block_size)
    if model_args.model_name_or_path is None:
        check_fresh_model(model_args, data_args.block_size)
    validate_fp8_args(model_args, training_args)
    check_wsd_kwargs(training_args)
    if model_args.model_name_or_path is None:
        check_fresh_model_fp8(model_args, training_args, data_args.block_size)
    ensure_writable_dir(training_args.output_dir, "--output_dir")
    from ..utils.resume import check_checkpoint_folders

    # a fresh run into a folder of an earlier run's checkpoints, or a resume from a checkpoint past --max_steps (one
    # at --max_steps is of this run, finished: it is restored, see `train_or_restore_finished`)
    check_checkpoint_folders(training_args.resume_from_checkpoint, [training_args.output_dir], training_args.max_steps)
    if not training_args.resume_from_checkpoint:  # not into another recipe's finished run
        from ._common import refuse_output_dir_of_another_recipe

        refuse_output_dir_of_another_recipe(training_args.output_dir, RUN_RECORD_NAME)
    if training_args.resume_from_checkpoint:  # the data and model of the run that wrote it (its folder's record)
        from ._common import checkpoint_run_folder, refuse_checkpoints_of_another_run

        run_folder = checkpoint_run_folder(
            training_args.resume_from_checkpoint, training_args.output_dir, RUN_RECORD_NAME
        )
        check_resume_run_record(run_folder, model_args, data_args)
        # a checkpoint of another folder's run: not beside the checkpoints of yet another run (`write_run_record`)
        refuse_checkpoints_of_another_run(training_args.resume_from_checkpoint, run_folder, training_args.output_dir)


#: Written into --output_dir when a run starts afresh: the flags that define its data and model, compared on resume.
RUN_RECORD_NAME = "pretrain_run.json"
_RECORD_MODEL_FLAGS = (
    "model_name_or_path", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "config_overrides",
)  # fmt: skip
_RECORD_DATA_FLAGS = (
    "dataset_name", "dataset_config_name", "train_file", "validation_file", "validation_split_seed", "text_column",
    "block_size", "vocab_size", "tokenizer_name", "max_eval_blocks",
)  # fmt: skip


def _run_record(model_args, data_args) -> dict:
    """The flags a resume must keep: another --block_size or --num_attention_heads of the same width (or other data)
    would load the checkpoint and go on training silently on other blocks, or as another model."""
    return {
        **{name: getattr(model_args, name) for name in _RECORD_MODEL_FLAGS},
        **{name: getattr(data_args, name) for name in _RECORD_DATA_FLAGS},
    }


def check_resume_run_record(run_folder: str, model_args, data_args) -> None:
    """A resume's data and model flags against the run record in `run_folder` (`check_run_record`). An unset
    `--intermediate_size` is DEFAULT_INTERMEDIATE_SIZE wherever the flag is accepted (fog's SwiGLU width, another
    architecture's width field; one without such a field refuses the flag), so `--intermediate_size 384` continues a
    run that left it unset (it was refused as another model)."""
    from ._common import check_run_record

    check_run_record(
        run_folder,
        RUN_RECORD_NAME,
        _run_record(model_args, data_args),
        "the data and model",
        none_means={"intermediate_size": DEFAULT_INTERMEDIATE_SIZE},
    )


def check_wsd_kwargs(training_args: TrainingArguments) -> None:
    """`--lr_scheduler_kwargs`: for the warmup_stable_decay schedule resolved against --max_steps as `Fp8Trainer`
    will (it used to fail only when training started), and for every schedule a JSON object of its options (see
    [`check_lr_scheduler_kwargs`])."""
    from ..fp8.trainer import resolve_wsd_kwargs
    from ._common import check_lr_scheduler_kwargs

    kwargs = training_args.lr_scheduler_kwargs
    if (
        training_args.max_steps > 0
        and SchedulerType(training_args.lr_scheduler_type) == SchedulerType.WARMUP_STABLE_DECAY
        and (kwargs is None or isinstance(kwargs, dict))
    ):
        try:
            resolve_wsd_kwargs(kwargs, training_args.max_steps)
        except ValueError as err:
            raise ValueError(f"--lr_scheduler_kwargs: {err}") from None
    check_lr_scheduler_kwargs(training_args.lr_scheduler_type, kwargs)


def check_fresh_model_fp8(model_args: ModelArguments, training_args: TrainingArguments, block_size: int) -> None:
    """The FP8 conversion of the fresh model, checked on a meta-device build before the tokenizer and data: it needs
    `nn.Linear` block layers (gpt2's are `Conv1D`) whose sizes are multiples of 16 (the flags cannot pad them)."""
    accelerate_fp8 = getattr(training_args, "mixed_precision", "no") == "fp8"
    if model_args.fp8_backend == "none" and not accelerate_fp8:
        return
    import torch
    from transformers import AutoModelForCausalLM

    from ..fp8.convert import fp8_target_modules

    backend = "accelerate's --mixed_precision fp8" if accelerate_fp8 else f"--fp8_backend {model_args.fp8_backend}"
    no_ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config = fresh_config(model_args, vocab_size=256, block_size=block_size, special_ids=no_ids)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)
    names = fp8_target_modules(model)
    if not names:
        raise ValueError(
            f"{backend} runs the block's nn.Linear layers in FP8, but a fresh {model_args.model_type} model has none "
            "(e.g. gpt2's projections are Conv1D); use --fp8_backend none"
            f"{' and launch without --mixed_precision fp8' if accelerate_fp8 else ''}, or a --model_type with "
            "nn.Linear layers (fog, llama, qwen2, ...)."
        )
    modules = dict(model.named_modules())
    bad = [n for n in names if modules[n].in_features % 16 or modules[n].out_features % 16]
    if bad:
        shown = ", ".join(f"{n} ({modules[n].in_features}->{modules[n].out_features})" for n in bad[:4])
        raise ValueError(
            f"{backend}: FP8 GEMMs need sizes divisible by 16, and these linears of the fresh "
            f"{model_args.model_type} model are not: {shown}{' ...' if len(bad) > 4 else ''}. Use --hidden_size, "
            "--intermediate_size (fog: the xIELU width is 1.5x it, rounded to 16) and a head size "
            "(--hidden_size / --num_attention_heads) divisible by 16, or --fp8_backend none."
        )


FP8_BACKENDS = ("none", "torchao", "te", "emulated")


def validate_fp8_args(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Check the FP8 options (backend, recipe, monitor) before any work."""
    if model_args.fp8_backend not in FP8_BACKENDS:
        raise ValueError(f"--fp8_backend must be one of {', '.join(FP8_BACKENDS)}, got {model_args.fp8_backend!r}.")
    if model_args.fp8_recipe not in ("tensorwise", "rowwise", "rowwise_with_gw_hp"):
        raise ValueError(
            f"--fp8_recipe must be tensorwise, rowwise or rowwise_with_gw_hp, got {model_args.fp8_recipe!r}."
        )
    if model_args.fp8_scaling not in ("delayed", "current"):
        raise ValueError(f"--fp8_scaling must be delayed or current, got {model_args.fp8_scaling!r}.")
    if model_args.fp8_attention and model_args.fp8_backend not in ("emulated", "te"):
        raise ValueError(
            "--fp8_attention needs --fp8_backend te (Transformer Engine's FP8 attention, fp8_dpa) or emulated; "
            f"{model_args.fp8_backend} has no FP8 attention."
        )
    if model_args.fp8_monitor_steps < 0:
        raise ValueError(f"--fp8_monitor_steps must be >= 0 (0 = off), got {model_args.fp8_monitor_steps}.")
    if model_args.fp8_monitor_action not in ("warn", "stop", "rollback"):
        raise ValueError(
            f"--fp8_monitor_action must be warn, stop or rollback, got {model_args.fp8_monitor_action!r}."
        )
    from ._common import changed_from_default

    accelerate_fp8 = getattr(training_args, "mixed_precision", "no") == "fp8"
    if "fp8_recipe" in changed_from_default(model_args, ["fp8_recipe"]) and not (
        accelerate_fp8 or model_args.fp8_backend == "torchao"
    ):
        raise ValueError(
            f"--fp8_recipe {model_args.fp8_recipe} is a torchao recipe, but --fp8_backend is "
            f"{model_args.fp8_backend}, so it would be ignored; drop it or use --fp8_backend torchao."
        )
    if "fp8_scaling" in changed_from_default(model_args, ["fp8_scaling"]) and (
        accelerate_fp8 or model_args.fp8_backend != "emulated"
    ):
        backend = "accelerate's fp8 mixed precision" if accelerate_fp8 else f"--fp8_backend {model_args.fp8_backend}"
        raise ValueError(
            f"--fp8_scaling {model_args.fp8_scaling} sets the emulated backend's scaling, but {backend} runs this "
            "model, so it would be ignored; drop it or use --fp8_backend emulated."
        )
    if model_args.fp8_monitor_steps == 0 and changed_from_default(model_args, ["fp8_monitor_action"]):
        raise ValueError(
            f"--fp8_monitor_action {model_args.fp8_monitor_action} acts on the kurtosis monitor's alerts, but "
            "--fp8_monitor_steps 0 turns the monitor off; drop it or set --fp8_monitor_steps N > 0."
        )
    if model_args.fp8_monitor_action == "rollback" and training_args.save_strategy in ("no", None):
        raise ValueError("--fp8_monitor_action rollback needs checkpoints: add --save_strategy steps --save_steps N.")
    if model_args.fp8_monitor_action == "rollback" and training_args.save_only_model:
        raise ValueError(
            "--fp8_monitor_action rollback resumes from a checkpoint, and --save_only_model true checkpoints hold only "
            "the weights (no optimizer, scheduler or RNG state to resume); drop --save_only_model."
        )
    if model_args.fp8_backend == "te":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--fp8_backend te needs a CUDA GPU; use --fp8_backend torchao or emulated on CPU.")
    if getattr(training_args, "mixed_precision", "no") == "fp8" and model_args.fp8_backend not in ("torchao", "none"):
        raise ValueError(
            "accelerate --mixed_precision fp8 converts the model with torchao itself; drop --fp8_backend "
            f"{model_args.fp8_backend} or launch without --mixed_precision fp8."
        )


DEFAULT_INTERMEDIATE_SIZE = 384
# Other names some architectures give the MLP width (`--intermediate_size`): GPT-2 / GPTBigCode, OPT, T5.
_INTERMEDIATE_ALIASES = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")


def fresh_config(model_args: ModelArguments, vocab_size: int, block_size: int, special_ids: dict | None = None):
    """The config of a fresh model, with every size flag on a field the architecture really has.

    Architectures name the MLP width differently (GPT-2 `n_inner`, OPT `ffn_dim`); a flag the architecture has no
    field for (e.g. `--num_key_value_heads` on GPT-2) is refused instead of being stored and ignored.
    """
    from transformers import AutoConfig

    width_given = model_args.intermediate_size is not None
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size if width_given else DEFAULT_INTERMEDIATE_SIZE,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        max_position_embeddings=max(block_size, 256) * 4,
        tie_word_embeddings=True,
        **(special_ids or {}),
    )
    if model_args.model_type == "fog":
        from ..models.fog import FogConfig

        if model_args.num_key_value_heads is not None:
            kwargs["num_key_value_heads"] = model_args.num_key_value_heads
        overrides = parse_config_overrides(model_args.config_overrides)
        if "intermediate_size" in overrides:  # the config field: the MLP's real width, as given
            del kwargs["intermediate_size"]
            kwargs.update(overrides)
            return FogConfig.fog(**kwargs)
        kwargs.update(overrides)
        swiglu = kwargs.pop("intermediate_size")
        return FogConfig.fog(swiglu_intermediate_size=swiglu, **kwargs)
    reference = AutoConfig.for_model(model_args.model_type)
    fields = set(reference.to_dict()) | set(reference.attribute_map)
    width = next((name for name in _INTERMEDIATE_ALIASES if name in fields), None)
    if width is not None:
        kwargs[width] = kwargs.pop("intermediate_size")
    elif width_given:
        raise ValueError(
            f"--intermediate_size {model_args.intermediate_size}: a {model_args.model_type} config has no MLP-width "
            "field (its width is fixed by hidden_size); drop the flag or use another --model_type."
        )
    else:
        del kwargs["intermediate_size"]
    if "num_key_value_heads" in fields:
        kwargs["num_key_value_heads"] = model_args.num_key_value_heads or model_args.num_attention_heads
    elif model_args.num_key_value_heads not in (None, model_args.num_attention_heads):
        raise ValueError(
            f"--num_key_value_heads {model_args.num_key_value_heads}: a {model_args.model_type} config has no "
            "grouped-query attention field; drop the flag or use a model type with GQA (llama, qwen2, mistral)."
        )
    # under the config's own field names (gpt2: n_embd, n_positions), so that an override of such a field wins
    kwargs = {reference.attribute_map.get(key, key): value for key, value in kwargs.items()}
    kwargs.update(_config_field_names(reference, parse_config_overrides(model_args.config_overrides)))
    return AutoConfig.for_model(model_args.model_type, **kwargs)


def check_model_type(model_args: ModelArguments) -> None:
    """`--model_type` must be fog or an architecture transformers knows."""
    if model_args.model_type == "fog":
        return
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(model_args.model_type)
    except ValueError:
        raise ValueError(
            f"--model_type {model_args.model_type!r} is not a known architecture; use fog, llama or another "
            "transformers model type (e.g. qwen2, mistral, gpt_neox)."
        ) from None


def check_fresh_model(model_args: ModelArguments, block_size: int) -> None:
    """Build the fresh model on the meta device (no memory, no data) so that transformers' own checks of the config
    and of `--attn_implementation` run before any work."""
    from ._common import check_meta_build

    check_model_type(model_args)
    no_ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    try:
        config = fresh_config(model_args, vocab_size=256, block_size=block_size, special_ids=no_ids)
    except Exception as err:
        # transformers' typed configs validate every field (huggingface_hub's StrictDataclassFieldValidationError, not
        # a ValueError): an override of the wrong type (rope_parameters=5, layer_types=[1,2]) ended the run with that
        # bare error, naming no flag
        if not type(err).__name__.startswith("StrictDataclass"):
            raise
        where = "--config_overrides" if model_args.config_overrides else "these flags"
        raise ValueError(
            f"The fresh {model_args.model_type} config refuses a value of {where}: {' '.join(str(err).split())}"
        ) from err
    check_meta_build(config, model_args.attn_implementation, f"fresh {model_args.model_type}")


#: Config entries that describe how a model was saved, not the model: a resume may differ in them.
_CONFIG_METADATA = ("transformers_version", "architectures", "dtype", "torch_dtype", "use_cache")


def resumed_config_updates(config, checkpoint: str | None) -> dict:
    """The entries of the checkpoint's model config that `config` (a fresh model's, rebuilt from the flags of the
    run, which its record keeps) sets otherwise, for a resume to continue the checkpoint's model: a value the flags
    now derive differently (FOG's input multiplier follows `initializer_range` since 2026-12-06, x50 before) would
    change the model mid-run without a word. Logged with a warning."""
    if checkpoint is None or not os.path.isfile(os.path.join(checkpoint, "config.json")):
        return {}
    from transformers import AutoConfig

    from ._common import check_checkpoint_embeds_tokenizer

    def plain(cfg) -> dict:  # JSON values (tuples as lists), as the checkpoint stores them
        return json.loads(json.dumps(cfg.to_dict(), default=str))

    saved, current = plain(AutoConfig.from_pretrained(checkpoint)), plain(config)
    check_checkpoint_embeds_tokenizer(checkpoint, current.get("vocab_size"))
    updates = {
        key: saved[key]
        for key in sorted(set(saved) & set(current))
        if not key.startswith("_") and key not in _CONFIG_METADATA and saved[key] != current[key]
    }
    if updates:
        logger.warning(
            "--resume_from_checkpoint %s: the resumed model keeps the checkpoint's %s (these flags now give %s), so "
            "the run goes on with the model it trained.",
            checkpoint,
            ", ".join(f"{key}={value!r}" for key, value in updates.items()),
            ", ".join(f"{key}={current[key]!r}" for key in updates),
        )
    return updates


def build_model(
    model_args: ModelArguments, tokenizer, block_size: int, meta: bool = False, config_updates: dict | None = None
):
    """A fresh model from config (or a pretrained one) sized for `tokenizer`; with `meta`, the same model's config and
    modules on the meta device (no weights loaded, no memory), e.g. to read its context length before training."""
    from transformers import AutoModelForCausalLM

    if model_args.model_name_or_path and not meta:
        return AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
        )
    if meta:
        return _meta_model(model_args, tokenizer, block_size, config_updates)
    config = _model_config(model_args, tokenizer, block_size, config_updates)
    return AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)


def _model_config(model_args: ModelArguments, tokenizer, block_size: int, config_updates: dict | None = None):
    """The config of the model `build_model` builds: the loaded model's, or a fresh one sized for `tokenizer`."""
    from transformers import AutoConfig

    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path)
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = fresh_config(model_args, len(tokenizer), block_size, special)
    config.update(config_updates or {})  # a resume: the entries the checkpoint's model has otherwise
    return config


def _meta_model(model_args: ModelArguments, tokenizer, block_size: int, config_updates: dict | None = None):
    """`build_model`'s model on the meta device: its config and modules, no weights loaded, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _model_config(model_args, tokenizer, block_size, config_updates)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)


def setup_fp8(model, model_args: ModelArguments, training_args: TrainingArguments):
    """Convert `model` for FP8 (unless accelerate's fp8 mixed precision does it) and build the health callback.

    Returns `(trainer_class, trainer_kwargs, callbacks)`.
    """
    from ..fp8 import Fp8HealthCallback, Fp8Trainer, ao_recipe_kwargs, convert
    from ..fp8.convert import fsdp2_in_use

    # accelerate 1.15 stores `--fp8_backend ao` verbatim, then rejects the lower-case value; accept it here.
    env_backend = os.environ.get("ACCELERATE_FP8_BACKEND")
    if env_backend and env_backend != env_backend.upper():
        os.environ["ACCELERATE_FP8_BACKEND"] = env_backend.upper()
    # Fp8Trainer also without FP8: it decays only what the model names (FOG: matrices) and resolves the WSD cooldown.
    trainer_cls, extra = Fp8Trainer, {}
    if getattr(training_args, "mixed_precision", "no") == "fp8":
        # FP8 all-gather only where FSDP2 shards the model: elsewhere it wraps the weights in a tensor safetensors
        # cannot save (tensorwise only)
        all_gather = model_args.fp8_recipe == "tensorwise" and fsdp2_in_use(training_args=training_args)
        extra = {
            "fp8_recipe_kwargs": ao_recipe_kwargs(model, model_args.fp8_recipe, fsdp_float8_all_gather=all_gather)
        }
    elif model_args.fp8_backend != "none":
        if model_args.fp8_backend == "te":
            model.to("cuda")
        convert(
            model,
            model_args.fp8_backend,
            recipe=model_args.fp8_recipe,
            scaling=model_args.fp8_scaling,
            fp8_attention=model_args.fp8_attention,
        )
    callbacks = []
    if model_args.fp8_monitor_steps > 0:
        callbacks.append(
            Fp8HealthCallback(every_n_steps=model_args.fp8_monitor_steps, action=model_args.fp8_monitor_action)
        )
    return trainer_cls, extra, callbacks


#: The report files a run writes (removed at the start of a fresh run into the same folder).
RESULT_FILES = ("pretrain_results.json", "fp8_health.json", "kurtosis.png")


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Train, save, reload with Auto classes, evaluate perplexity and sample. Returns the final metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed

    import hf_ext  # noqa: F401  (registers the package's architectures)

    from ..data import build_tokenizer, load_text_datasets, pack_dataset
    from ..utils.distributed import rank_fingerprints
    from ..utils.evaluation import causal_lm_eval_loss
    from ..utils.io import atomic_write_json, atomic_write_results

    validate_args(model_args, data_args, training_args)
    set_seed(training_args.seed)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
        if tokenizer.eos_token_id is None:  # pack_dataset's refusal named its add_eos=, which no flag sets
            source = (
                f"--tokenizer_name {data_args.tokenizer_name!r}"
                if data_args.tokenizer_name
                else f"the tokenizer of --model_name_or_path {model_args.model_name_or_path!r}"
            )
            raise ValueError(
                f"{source} has no eos_token, and pretrain separates the documents it packs with EOS; pass a tokenizer "
                "with one (set tokenizer.eos_token, then tokenizer.save_pretrained) or drop the flag to build one."
            )
        from ._common import set_missing_pad_token

        set_missing_pad_token(
            tokenizer,
            fresh_model=not model_args.model_name_or_path,
            vocab_size=parse_config_overrides(model_args.config_overrides).get("vocab_size"),
        )
    else:
        from ._common import warn_embedded_corpus_tokenizer

        warn_embedded_corpus_tokenizer(
            {"--train_file": data_args.train_file, "--dataset_name": data_args.dataset_name}, data_args.vocab_size
        )
        with training_args.main_process_first(desc="build tokenizer"):
            tokenizer = build_tokenizer(data_args.vocab_size)
    from ._common import check_learned_positions, check_tokenizer_fits_model

    check_tokenizer_fits_model(tokenizer, model_args.model_name_or_path, data_args.tokenizer_name)
    check_learned_positions(  # a gpt2's position table: an IndexError at the first step, or in the sample
        _meta_model(model_args, tokenizer, data_args.block_size),
        f"the model --model_name_or_path {model_args.model_name_or_path!r}"
        if model_args.model_name_or_path
        else f"the fresh {model_args.model_type} model",
        data_args.block_size,
        len(tokenizer(data_args.prompt, add_special_tokens=False)["input_ids"]),
        data_args.max_new_tokens,
    )
    overridden_vocab = parse_config_overrides(model_args.config_overrides).get("vocab_size")
    if isinstance(overridden_vocab, int) and overridden_vocab < len(tokenizer):  # token ids past the embedding table
        raise ValueError(
            f"--config_overrides vocab_size={overridden_vocab} is smaller than the tokenizer's {len(tokenizer)} tokens "
            "(its ids would index past the embedding table); drop it (the model takes the tokenizer's size) or set "
            f"at least {len(tokenizer)}."
        )
    train_text, eval_text = load_text_datasets(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_file,
        data_args.validation_file,
        data_args.text_column,
        seed=data_args.validation_split_seed,
    )
    with training_args.main_process_first(desc="pack datasets"):
        train_ds = pack_dataset(train_text, tokenizer, data_args.block_size, data_args.text_column)
        eval_ds = pack_dataset(eval_text, tokenizer, data_args.block_size, data_args.text_column)
    if data_args.max_eval_blocks is not None and len(eval_ds) > data_args.max_eval_blocks:
        eval_ds = eval_ds.select(range(data_args.max_eval_blocks))
    if len(train_ds) == 0:
        raise ValueError(f"No training block of {data_args.block_size} tokens could be formed; lower --block_size.")
    if len(eval_ds) == 0:  # an empty evaluation would report loss 0 and perplexity 1
        raise ValueError(
            f"No evaluation block of {data_args.block_size} tokens could be formed from the {len(eval_text)} "
            "validation document(s); lower --block_size or pass a longer --validation_file."
        )
    config_updates = None  # a resumed fresh model: the checkpoint's config entries the flags now set otherwise
    if training_args.resume_from_checkpoint and not model_args.model_name_or_path:
        from ..utils.resume import resolve_resume_checkpoint

        config_updates = resumed_config_updates(
            build_model(model_args, tokenizer, data_args.block_size, meta=True).config,
            resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir),
        )
    model = build_model(model_args, tokenizer, data_args.block_size, config_updates=config_updates)
    trainer_cls, trainer_kwargs, callbacks = setup_fp8(model, model_args, training_args)
    from ..utils.resume import check_resume_schedule

    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    # before the run record and the removal of older results: a resume refused for another schedule (the check needs
    # the Trainer) leaves the folder as it found it (and `main` removes a folder this run created, left empty)
    check_resume_schedule(trainer, training_args.resume_from_checkpoint)
    # after the tokenizer, the data (a --text_column the data lacks fails there) and the resume's schedule check: a
    # run refused for a bad argument leaves the earlier run's results alone
    if training_args.process_index == 0:  # an older run's results must not look current if this run stops early
        from ._common import clear_previous_results

        clear_previous_results(training_args.output_dir, RESULT_FILES, bool(training_args.resume_from_checkpoint))
        from ._common import write_run_record  # what a resume of this run must keep (checked in `validate_args`)

        write_run_record(
            training_args.output_dir,
            RUN_RECORD_NAME,
            _run_record(model_args, data_args),
            resumed_from=training_args.resume_from_checkpoint or None,
        )
    for cb in callbacks:  # first in line, so that progress bars and loggers see the fp8/... metrics
        trainer.callback_handler.callbacks.remove(cb)
        trainer.callback_handler.callbacks.insert(0, cb)
    if model_args.fp8_monitor_action == "rollback" and callbacks:
        from ..fp8 import train_with_rollback

        train_result = train_with_rollback(trainer, callbacks[0], training_args.resume_from_checkpoint)
    else:
        from ..utils.resume import train_or_restore_finished

        # a checkpoint at --max_steps (a run stopped after its last checkpoint) is restored, not trained a step past
        train_result = train_or_restore_finished(trainer, training_args.resume_from_checkpoint)
    from ..utils.distributed import broadcast_object
    from ._common import model_not_written, weight_files, whole_run_train_loss

    is_main = trainer.is_world_process_zero()
    before = weight_files(training_args.output_dir) if is_main else {}
    trainer.save_model(training_args.output_dir)
    # the folder is reloaded and evaluated below: never a model this run did not just write there (an earlier run's
    # model left in --output_dir was reported as this run's when a save wrote nothing)
    problem = broadcast_object(model_not_written(training_args.output_dir, before) if is_main else None)
    if problem:
        raise RuntimeError(problem)

    metrics = {
        "train_loss": whole_run_train_loss(trainer, train_result.training_loss if train_result else 0.0),
        "loss_curve": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
        # the evaluations of --eval_strategy steps/epoch (also those before a resumed checkpoint): they were computed
        # and only printed, so a run without --report_to kept no record of them
        "eval_loss_curve": [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h],
        "fp8_backend": "accelerate-ao" if "fp8_recipe_kwargs" in trainer_kwargs else model_args.fp8_backend,
        "world_size": training_args.world_size,
        "rank_fingerprints": rank_fingerprints(trainer.model),
    }
    results_path = os.path.join(training_args.output_dir, "pretrain_results.json")
    health = callbacks[0] if callbacks else None
    if trainer.is_world_process_zero():
        # The trained model and its results are on disk before any optional step (plot, sample) runs.
        if health is not None:
            metrics["fp8_alerts"] = len(health.alerts)
            metrics["fp8_actions"] = health.actions_taken
            atomic_write_json(os.path.join(training_args.output_dir, "fp8_health.json"), health.state_dict(), None)
        atomic_write_results(results_path, metrics)
    trainer.accelerator.wait_for_everyone()

    if trainer.is_world_process_zero():
        reloaded = AutoModelForCausalLM.from_pretrained(training_args.output_dir)
        reloaded_tok = AutoTokenizer.from_pretrained(training_args.output_dir)
        metrics["eval_loss"] = causal_lm_eval_loss(reloaded, eval_ds, training_args.per_device_eval_batch_size)
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        atomic_write_results(results_path, metrics)
        print(f"reloaded {type(reloaded).__name__} from {training_args.output_dir}")
        print(f"eval loss {metrics['eval_loss']:.4f}  perplexity {metrics['perplexity']:.2f}")
        if health is not None and health.history:
            from ..fp8 import plot_kurtosis

            metrics["kurtosis_plot"] = plot_kurtosis(
                health.history,
                os.path.join(training_args.output_dir, "kurtosis.png"),
                title=f"{model_args.model_type}, fp8 backend {metrics['fp8_backend']}",
            )
        enc = reloaded_tok(data_args.prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = reloaded.generate(
                **enc, max_new_tokens=data_args.max_new_tokens, do_sample=False, pad_token_id=reloaded_tok.pad_token_id
            )
        metrics["sample"] = reloaded_tok.decode(out[0], skip_special_tokens=True)
        atomic_write_results(results_path, metrics)
        print(f"sample: {metrics['sample']!r}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args, removed_if_refused

    model_args, data_args, training_args = parse_recipe_args(
        (ModelArguments, DataArguments, PretrainTrainingArguments), argv
    )
    # `validate_args` creates --output_dir (its writability check) and the Trainer does: a run refused after that
    # (a resume's schedule, the data, the tokenizer) left the empty folder behind
    with removed_if_refused(training_args.output_dir):
        result = run(model_args, data_args, training_args)
    return finish(result)


if __name__ == "__main__":
    main()
