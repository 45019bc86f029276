"""Layer-paired inference: perplexity sweep over paired ranges, convert within a budget, optionally fine-tune, save.

Run as `python scripts/layer_parallel.py`, `accelerate launch scripts/layer_parallel.py` or `hf-ext run
layer_parallel`. Without `--model_name_or_path` a small Llama is first trained on the embedded corpus for a few
minutes (CPU), so the sweep has a trained model to measure.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from ..utils.io import atomic_savefig, atomic_write_results
from ._common import validation_split_seed_field


@dataclass
class LayerParallelModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Llama/Mistral/Qwen2 model (folder or hub id) to convert; default: train a small Llama."},
    )
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the small Llama trained first."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width of the small Llama."})
    num_hidden_layers: int = field(default=8, metadata={"help": "Layers of the small Llama (>= 2)."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the small Llama."})
    num_key_value_heads: int = field(default=2, metadata={"help": "KV heads of the small Llama (GQA)."})
    pretrain_steps: int = field(default=600, metadata={"help": "Training steps of the small Llama."})
    pretrain_learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of that training."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa or eager."})


@dataclass
class LayerParallelDataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset or local dataset folder; default: the embedded offline corpus."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "Local .txt/.json/.jsonl/.csv/.parquet file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    validation_split_seed: int = validation_split_seed_field()
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    block_size: int = field(default=64, metadata={"help": "Tokens per block (>= 2)."})
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    max_eval_blocks: int = field(default=64, metadata={"help": "Evaluate perplexity on at most this many blocks."})


@dataclass
class LayerParallelSweepArguments:
    lp_mode: str = field(default="sublayer", metadata={"help": "Pair form: sublayer (reference code) or block."})
    lp_mlp_norm: str = field(default="per_layer", metadata={"help": "MLP norm: per_layer or official_tp_split."})
    pair_counts: str | None = field(
        default=None, metadata={"help": "Comma-separated numbers of pairs to sweep, e.g. '1,2,3'; default: all."}
    )
    sweep_stride: int = field(default=1, metadata={"help": "Step between start positions in the sweep."})
    max_ppl_increase: float = field(
        default=0.25,
        metadata={
            "help": "Perplexity budget: pick the most pairs with ppl <= (1 + this) x source ppl (>= 0; inf: no "
            "budget, the most pairs; nan is refused)."
        },
    )
    lp_start: int | None = field(
        default=None, metadata={"help": "Convert this range instead of the one chosen by the sweep (with --lp_end)."}
    )
    lp_end: int | None = field(default=None, metadata={"help": "End (exclusive) of the range given by --lp_start."})
    skip_sweep: bool = field(default=False, metadata={"help": "Skip the sweep (needs --lp_start/--lp_end)."})
    finetune: bool = field(
        default=True, metadata={"help": "Fine-tune the paired layers only (everything else frozen) after converting."}
    )
    eval_tasks: str | None = field(
        default=None,
        metadata={
            "help": "Also run these comma-separated lm-evaluation-harness tasks on the source and on every paired "
            "range of the sweep (e.g. hf_ext_domain,hf_ext_cloze: the packaged offline tasks; needs the eval extra): "
            "task score and retention next to perplexity, the paper's retention curve. Default: off."
        },
    )
    eval_metric: str = field(default="acc", metadata={"help": "lm-eval metric reported and used for the retention."})
    eval_fewshot: int = field(default=0, metadata={"help": "Few-shot examples per lm-eval prompt."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many items per task."})


@dataclass
class LayerParallelTrainingArguments(TrainingArguments):
    output_dir: str = field(default="outputs/layer_parallel", metadata={"help": "Where results and models go."})
    max_steps: int = field(default=100, metadata={"help": "Fine-tuning steps of the paired layers."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device per step."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Blocks per evaluation forward."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate of the fine-tuning."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps (int) or fraction of max_steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=20, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpointing strategy during fine-tuning (only with --finetune)."}
    )
    eval_strategy: str = field(
        default="no",
        metadata={
            "help": "Evaluation strategy during fine-tuning (eval loss on the --max_eval_blocks eval blocks; only with "
            "--finetune)."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue the fine-tuning from a Trainer checkpoint of this recipe: a checkpoint-N folder, or no "
            "value (or last) for the newest complete one in --output_dir. The checkpoint must hold the same paired "
            "range, --lp_mode and --lp_mlp_norm; needs --finetune."
        },
    )


def parse_pair_counts(text: str | None) -> list[int] | None:
    """'1,2,3' -> [1, 2, 3]."""
    if text is None or not text.strip():
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"--pair_counts must be comma-separated integers like '1,2,3', got {text!r}.") from err


#: Flags that shape or train the small Llama built when --model_name_or_path is not given.
SMALL_LLAMA_FLAGS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "pretrain_steps", "pretrain_learning_rate",
)  # fmt: skip
#: Flags that only the lm-eval scores of --eval_tasks read.
EVAL_FLAGS = ("eval_metric", "eval_fewshot", "eval_limit")
#: Flags that only the sweep reads (--skip_sweep skips it).
SWEEP_FLAGS = ("pair_counts", "sweep_stride", "max_ppl_increase")
#: Training flags that only the fine-tuning reads (--finetune false skips it).
FINETUNE_FLAGS = ("max_steps", "learning_rate", "warmup_steps", "lr_scheduler_type", "weight_decay", "logging_steps")


def check_ignored_flags(model_args, data_args, sweep_args, training_args) -> None:
    """Refuse, by name, a flag set on the command line that this run would ignore."""
    from ._common import changed_from_default

    if model_args.model_name_or_path:
        for name in changed_from_default(model_args, SMALL_LLAMA_FLAGS):
            raise ValueError(
                f"--{name} shapes or trains the small Llama built without --model_name_or_path, but "
                f"--model_name_or_path={model_args.model_name_or_path!r} is loaded with its own config and weights, so "
                f"it would be ignored; drop --{name} (or --model_name_or_path to train the small Llama)."
            )
        if changed_from_default(data_args, ["vocab_size"]):
            raise ValueError(
                "--vocab_size sizes the tokenizer built for the small Llama, but the tokenizer of "
                f"--model_name_or_path={model_args.model_name_or_path!r} is loaded, so it would be ignored; drop "
                "--vocab_size."
            )
    if sweep_args.eval_tasks is None:
        for name in changed_from_default(sweep_args, EVAL_FLAGS):
            raise ValueError(
                f"--{name} only applies to the lm-eval scores of --eval_tasks; add --eval_tasks or drop it."
            )
    if sweep_args.skip_sweep:
        for name in changed_from_default(sweep_args, SWEEP_FLAGS):
            raise ValueError(f"--{name} configures the sweep, which --skip_sweep skips; drop it or --skip_sweep.")
    if not sweep_args.finetune:
        for name in changed_from_default(training_args, FINETUNE_FLAGS):
            value = getattr(training_args, name)
            raise ValueError(
                f"--{name} {getattr(value, 'value', value)} applies to the fine-tuning, but --finetune is false (it "
                f"would be ignored); drop --{name} or --finetune false."
            )
        if model_args.model_name_or_path and changed_from_default(training_args, ["per_device_train_batch_size"]):
            raise ValueError(
                f"--per_device_train_batch_size {training_args.per_device_train_batch_size} applies to the fine-tuning "
                "and the small Llama's pretraining, but --finetune is false and --model_name_or_path is loaded (it "
                "would be ignored); drop --per_device_train_batch_size or --finetune false."
            )


def validate_args(model_args, data_args, sweep_args, training_args) -> None:
    """Check every argument before any data is loaded or anything is written."""
    from ..data.loading import check_dataset_config, check_dataset_name, hub_offline
    from ..models.layer_parallel.configuration_layer_parallel import LP_MLP_NORMS, LP_MODES
    from ..utils.io import ensure_writable_dir
    from ._common import check_model_tokenizer_files, check_vocab_size, refuse_undistributed_launch

    refuse_undistributed_launch(training_args, "layer_parallel")  # N ranks that would each train alone
    check_dataset_config(data_args.dataset_name, data_args.dataset_config_name)  # else silently ignored
    if data_args.block_size < 2:
        # a 1-token block has no next token to predict: its perplexity would be refused only after the source model
        # was pre-trained and saved into --output_dir
        raise ValueError(
            f"--block_size must be at least 2 tokens (one to read, one to predict), got {data_args.block_size}."
        )
    if data_args.max_eval_blocks <= 0:
        raise ValueError(f"--max_eval_blocks must be positive, got {data_args.max_eval_blocks}.")
    check_dataset_name(  # a path that is no folder, or a Hub name offline
        data_args.dataset_name,
        "Drop --dataset_name to use the embedded corpus, or pass --train_file/--validation_file.",
    )
    if sweep_args.lp_mode not in LP_MODES:
        raise ValueError(f"--lp_mode must be one of {list(LP_MODES)}, got {sweep_args.lp_mode!r}.")
    if sweep_args.lp_mlp_norm not in LP_MLP_NORMS:
        raise ValueError(f"--lp_mlp_norm must be one of {list(LP_MLP_NORMS)}, got {sweep_args.lp_mlp_norm!r}.")
    if sweep_args.lp_mlp_norm == "official_tp_split" and sweep_args.lp_mode != "sublayer":
        raise ValueError("--lp_mlp_norm official_tp_split needs --lp_mode sublayer.")
    if math.isnan(sweep_args.max_ppl_increase) or sweep_args.max_ppl_increase < 0:
        raise ValueError(
            f"--max_ppl_increase must be a number >= 0 (0.25 = +25%; inf: no budget), got {sweep_args.max_ppl_increase}."
        )
    if sweep_args.sweep_stride < 1:
        raise ValueError(f"--sweep_stride must be >= 1, got {sweep_args.sweep_stride}.")
    if (sweep_args.lp_start is None) != (sweep_args.lp_end is None):
        raise ValueError("Give both --lp_start and --lp_end, or neither (then the sweep chooses the range).")
    if sweep_args.skip_sweep and sweep_args.lp_start is None:
        raise ValueError("--skip_sweep needs an explicit range: add --lp_start and --lp_end.")
    parse_pair_counts(sweep_args.pair_counts)
    if sweep_args.eval_tasks is not None:
        from ..evaluation.harness import check_fewshot_pool
        from ..evaluation.prompting import check_eval_tasks

        if sweep_args.skip_sweep:
            raise ValueError("--eval_tasks evaluates the ranges of the sweep; drop --skip_sweep or --eval_tasks.")
        if sweep_args.eval_fewshot < 0:
            raise ValueError(f"--eval_fewshot must be >= 0, got {sweep_args.eval_fewshot}.")
        if sweep_args.eval_limit is not None and sweep_args.eval_limit < 1:
            raise ValueError(f"--eval_limit must be >= 1 (items per task), got {sweep_args.eval_limit}.")
        names = check_eval_tasks(sweep_args.eval_tasks, "--eval_tasks", metric=sweep_args.eval_metric)
        check_fewshot_pool(names, [sweep_args.eval_fewshot], "--eval_fewshot")
    if model_args.model_name_or_path is None:
        if model_args.num_hidden_layers < 2:
            raise ValueError(f"--num_hidden_layers must be >= 2 to pair layers, got {model_args.num_hidden_layers}.")
        if model_args.hidden_size % model_args.num_attention_heads:
            raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
        if model_args.num_attention_heads % model_args.num_key_value_heads:
            raise ValueError("--num_attention_heads must be divisible by --num_key_value_heads.")
        if model_args.pretrain_steps < 1:
            raise ValueError(f"--pretrain_steps must be >= 1, got {model_args.pretrain_steps}.")
        lr = model_args.pretrain_learning_rate
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"--pretrain_learning_rate must be a finite number > 0, got {lr}.")
    elif not os.path.isdir(model_args.model_name_or_path) and hub_offline():
        raise ValueError(
            f"--model_name_or_path={model_args.model_name_or_path!r} is not a local folder and HF_HUB_OFFLINE is set; "
            "pass a saved model folder."
        )
    if sweep_args.finetune and training_args.max_steps < 1:
        raise ValueError("--max_steps (fine-tuning steps) must be >= 1 with --finetune; or pass --finetune false.")
    from ..utils.resume import resolve_resume_checkpoint

    training_args.resume_from_checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    if not sweep_args.finetune:
        for name in ("save_strategy", "eval_strategy"):
            value = getattr(training_args, name)
            if value != "no":
                raise ValueError(
                    f"--{name} {getattr(value, 'value', value)} applies to the fine-tuning, but --finetune is false "
                    f"(nothing would be saved or evaluated); drop --{name} or --finetune false."
                )
    if training_args.resume_from_checkpoint and not sweep_args.finetune:
        raise ValueError(
            "--resume_from_checkpoint continues the fine-tuning, but --finetune is false (nothing would resume); drop "
            "--resume_from_checkpoint or --finetune false."
        )
    check_ignored_flags(model_args, data_args, sweep_args, training_args)
    check_model_tokenizer_files(model_args.model_name_or_path, None, tokenizer_flag=False)
    if sweep_args.finetune and not training_args.resume_from_checkpoint:
        from ..utils.resume import last_complete_checkpoint

        found = last_complete_checkpoint(training_args.output_dir)
        if found is not None:
            raise ValueError(
                f"{found} exists: this --output_dir holds fine-tuning checkpoints of an earlier run, which this run's "
                "would mix with (a later --resume_from_checkpoint would pick the newest of either). Pass "
                "--resume_from_checkpoint to continue it, or choose another --output_dir."
            )
    if not training_args.resume_from_checkpoint:  # not into another recipe's finished run
        from ._common import refuse_output_dir_of_another_recipe

        refuse_output_dir_of_another_recipe(training_args.output_dir, RUN_RECORD_NAME)
    if training_args.resume_from_checkpoint:
        from ..utils.resume import refuse_checkpoint_past_max_steps

        # past --max_steps: another run's; at --max_steps: this run's, finished, restored (`train_or_restore_finished`)
        refuse_checkpoint_past_max_steps(training_args.resume_from_checkpoint, training_args.max_steps)
        _check_checkpoint_pairing(
            training_args.resume_from_checkpoint, sweep_args, sweep_args.lp_start, sweep_args.lp_end
        )
        from ._common import check_run_record, checkpoint_run_folder, refuse_checkpoints_of_another_run

        run_folder = checkpoint_run_folder(
            training_args.resume_from_checkpoint, training_args.output_dir, RUN_RECORD_NAME
        )
        check_run_record(  # the source model and data of the run that wrote it (its folder's record)
            run_folder,
            RUN_RECORD_NAME,
            _run_record(model_args, data_args, training_args),
            "the source model and data",
        )
        # a checkpoint of another folder's run: not beside the checkpoints of yet another run (`write_run_record`)
        refuse_checkpoints_of_another_run(training_args.resume_from_checkpoint, run_folder, training_args.output_dir)
    _check_ranges_fit_the_source(model_args, sweep_args)
    _check_pairing_fits_the_source(model_args, sweep_args)
    _check_attn_implementation(model_args)
    check_vocab_size(data_args.vocab_size, model_args.model_name_or_path)  # the tokenizer built for the small Llama
    ensure_writable_dir(training_args.output_dir, "--output_dir")


#: Written into --output_dir when a fine-tuning run starts afresh: the flags that define the source model (trained
#: afresh on every run unless loaded) and the data, compared on resume; the pairing is checked from the checkpoint's
#: config (`_check_checkpoint_pairing`).
RUN_RECORD_NAME = "layer_parallel_run.json"


def _run_record(model_args, data_args, training_args) -> dict:
    """The flags a resume must keep: another --block_size, --train_file or source model (its size, --pretrain_steps,
    --seed) would continue the checkpoint's fine-tuning on other blocks, or pick its pairs on another source model."""
    return {
        **{f.name: getattr(model_args, f.name) for f in fields(model_args) if f.name != "attn_implementation"},
        **{f.name: getattr(data_args, f.name) for f in fields(data_args)},
        "seed": training_args.seed,
    }


def _source_config(model_args):
    """The source model's config without building the model: the small Llama's (vocabulary not yet known: 256), or
    the `config.json` of --model_name_or_path."""
    from transformers import AutoConfig, LlamaConfig

    if model_args.model_name_or_path is None:
        return LlamaConfig(
            vocab_size=256,
            hidden_size=model_args.hidden_size,
            intermediate_size=model_args.intermediate_size,
            num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=model_args.num_attention_heads,
            num_key_value_heads=model_args.num_key_value_heads,
        )
    return AutoConfig.from_pretrained(model_args.model_name_or_path)


def _check_attn_implementation(model_args) -> None:
    """Build the source on the meta device (no memory, no data) so that transformers' check of
    `--attn_implementation` (unknown name, kernel package missing) runs before any work."""
    from ._common import check_meta_build

    check_meta_build(_source_config(model_args), model_args.attn_implementation, "source")


def _check_pairing_fits_the_source(model_args, sweep_args) -> None:
    """Build the layer-parallel config this run converts with (--lp_mode, --lp_mlp_norm, the given range if any)
    from the source's config, so that every constraint of `LayerParallelConfig` (e.g. an even MLP width for
    `official_tp_split`) is checked before the source is trained or loaded."""
    from ..models.layer_parallel.configuration_layer_parallel import LayerParallelConfig

    config = _source_config(model_args)
    try:
        LayerParallelConfig(
            source_config=config,
            lp_start=sweep_args.lp_start,
            lp_end=sweep_args.lp_end,
            lp_mode=sweep_args.lp_mode,
            lp_mlp_norm=sweep_args.lp_mlp_norm,
        )
    except (TypeError, ValueError) as err:
        source = (
            "the small Llama (--hidden_size, --intermediate_size, --num_hidden_layers, ...)"
            if model_args.model_name_or_path is None
            else f"the config of --model_name_or_path={model_args.model_name_or_path!r}"
        )
        raise ValueError(
            f"--lp_mode {sweep_args.lp_mode} --lp_mlp_norm {sweep_args.lp_mlp_norm} cannot convert {source}: {err}"
        ) from err


def _check_checkpoint_pairing(checkpoint: str, sweep_args, start: int | None, end: int | None) -> None:
    """The fine-tuning checkpoint to resume from must hold the model this run converts: a layer-parallel model with
    the same --lp_mode, --lp_mlp_norm and (when known: given, or chosen by the sweep) paired range."""
    path = os.path.join(checkpoint, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} has no readable config.json ({err}); pass a checkpoint written "
            "by this recipe's fine-tuning."
        ) from err
    if saved.get("model_type") != "layer_parallel":
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} holds a {saved.get('model_type')!r} model, not the "
            "layer-parallel model this recipe fine-tunes; pass a checkpoint written by this recipe's fine-tuning."
        )
    wanted = {"lp_mode": sweep_args.lp_mode, "lp_mlp_norm": sweep_args.lp_mlp_norm}
    if start is not None:
        wanted.update(lp_start=start, lp_end=end)
    differ = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}={old!r} there, {new!r} here" for k, (old, new) in differ.items())
        raise ValueError(
            f"--resume_from_checkpoint={checkpoint!r} was fine-tuned with another pairing ({detail}); resume with the "
            f"checkpoint's settings (--lp_mode {saved.get('lp_mode')} --lp_mlp_norm {saved.get('lp_mlp_norm')} "
            f"--lp_start {saved.get('lp_start')} --lp_end {saved.get('lp_end')})."
        )


def _check_ranges_fit_the_source(model_args, sweep_args) -> None:
    """Check --lp_start/--lp_end and --pair_counts against the source's depth (the small Llama's, or the one in the
    config of --model_name_or_path) before the source is trained or loaded."""
    from ..models.layer_parallel.configuration_layer_parallel import (
        SUPPORTED_SOURCE_MODEL_TYPES,
        check_pair_attention_types,
        layer_attention_types,
        resolve_pairs,
    )
    from ..models.layer_parallel.sweep import pairing_ranges

    if model_args.model_name_or_path is None:
        num_layers, layer_types = model_args.num_hidden_layers, None
    else:
        from transformers import AutoConfig

        import hf_ext  # noqa: F401  (registers the package's architectures, so their configs give a clear error)

        try:
            config = AutoConfig.from_pretrained(model_args.model_name_or_path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"--model_name_or_path={model_args.model_name_or_path!r} has no readable model config ({err}); pass a "
                "Llama, Mistral or Qwen2 causal LM folder or hub id."
            ) from err
        if config.model_type not in SUPPORTED_SOURCE_MODEL_TYPES:
            raise ValueError(
                f"--model_name_or_path={model_args.model_name_or_path!r} is a {config.model_type!r} model; layer "
                f"pairing converts {list(SUPPORTED_SOURCE_MODEL_TYPES)} causal LMs (pass the original source model, "
                "not an already converted one)."
            )
        num_layers, layer_types = config.num_hidden_layers, layer_attention_types(config)
    if sweep_args.lp_start is not None:
        try:
            pairs = resolve_pairs(num_layers, sweep_args.lp_start, sweep_args.lp_end)
            if layer_types is not None:
                check_pair_attention_types(pairs, layer_types)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--lp_start/--lp_end: {err}") from err
        if sweep_args.finetune and sweep_args.lp_start == sweep_args.lp_end:
            raise ValueError(
                f"--lp_start and --lp_end are both {sweep_args.lp_start}: an empty range has no paired layer to "
                "fine-tune; give a non-empty range or pass --finetune false."
            )
    if not sweep_args.skip_sweep:
        try:
            pairing_ranges(num_layers, parse_pair_counts(sweep_args.pair_counts), sweep_args.sweep_stride, layer_types)
        except ValueError as err:
            raise ValueError(f"--pair_counts: {err}") from err


def _range_record(row: dict | None) -> dict | None:
    """`{"start", "end", "pairs"}` of a sweep row (`None` stays `None`)."""
    return None if row is None else {"start": row["start"], "end": row["end"], "pairs": row["pairs"]}


def _converted_row(rows: list[dict], start: int, end: int) -> dict:
    """The sweep row of the range `[start, end)` given by --lp_start/--lp_end, or, when the sweep did not measure
    that range (other pair counts or stride, or an empty range), a record of the range itself."""
    for row in rows:
        if row["pairs"] > 0 and (row["start"], row["end"]) == (start, end):
            return row
    return {"start": start, "end": end, "pairs": (end - start) // 2}


def _sweep_note(sweep_args, suggestion: dict | None) -> str | None:
    """The line under sweep.md's table when --lp_start/--lp_end overrides the sweep's choice."""
    if sweep_args.lp_start is None:
        return None
    if suggestion is None:
        theirs = f"none within +{sweep_args.max_ppl_increase:.0%}"
    else:
        theirs = f"[{suggestion['start']}, {suggestion['end']})"
    return (
        f"`*`: the converted range [{sweep_args.lp_start}, {sweep_args.lp_end}), given by --lp_start/--lp_end. The "
        f"sweep's own choice (--max_ppl_increase {sweep_args.max_ppl_increase}): {theirs} (`sweep_suggestion`)."
    )


def _task_eval(sweep_args, tokenizer, batch_size: int):
    """lm-eval on one model of the sweep: `{"task_scores": {task: score}}` (the metric of `--eval_metric`). The
    function's `declared` dict collects, per task, the direction lm-eval reports for that metric (`True`: lower is
    better, `None`: lm-eval does not say), for [`_add_retention`]."""
    from ..compliance.dcg import declared_lower_is_better
    from ..evaluation import evaluate_model, task_scores

    tasks = [t.strip() for t in sweep_args.eval_tasks.split(",")]
    declared: dict[str, bool | None] = {}

    def evaluate(model) -> dict:
        res = evaluate_model(
            model, tokenizer, tasks=tasks, num_fewshot=sweep_args.eval_fewshot, limit=sweep_args.eval_limit,
            batch_size=batch_size,
        )  # fmt: skip
        scores = task_scores(res, sweep_args.eval_metric)
        for task in scores:
            if declared.get(task) is None:
                declared[task] = declared_lower_is_better(res, task, sweep_args.eval_metric)
        return {"task_scores": scores}

    evaluate.declared = declared
    return evaluate


def _add_retention(rows: list[dict], metric: str, declared: dict | None = None) -> None:
    """Add `task_retention` (`{task: percent of the source's score kept}`) and `retention` (their mean) to every row
    (the source row: 100). A task the source scores 0 on, or with a negative score (a metric such as mcc), has no
    retention (`None`, left out of the mean); `retention` is `None` when no task has one. Lower-is-better metrics use
    source / paired: where lm-eval reports the direction (`declared`, `{task: True | False | None}`: `ter`,
    `brier_score`, a task's declared metrics), as it says; else by the metric's name (perplexities, also given as
    lm-eval's key `perplexity,none`, which `--eval_metric` accepts)."""
    from ..compliance.dcg import is_lower_is_better

    base = rows[0]["task_scores"]
    # by name, "perplexity,none" included (read as higher-is-better it gave 200% for twice the perplexity)
    by_name = is_lower_is_better(metric)
    for row in rows:
        per_task = {}
        for task, ref in base.items():
            value = row["task_scores"][task]
            said = (declared or {}).get(task)
            lower = said if said is not None else by_name
            num, den = (ref, value) if lower else (value, ref)
            per_task[task] = 100.0 * num / den if den > 0 and num >= 0 else None
        defined = [v for v in per_task.values() if v is not None]
        row["task_retention"] = per_task
        row["retention"] = sum(defined) / len(defined) if defined else None


def _pretrain_small_llama(model_args, tokenizer, train_ds, training_args, block_size: int):
    """Train a small LlamaForCausalLM on `train_ds` so that the sweep measures a model that has learnt something."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, default_data_collator

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_key_value_heads,
        max_position_embeddings=max(block_size, 256) * 4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(training_args.seed)
    model = LlamaForCausalLM._from_config(config, attn_implementation=model_args.attn_implementation)
    source_dir = os.path.join(training_args.output_dir, "source")
    args = TrainingArguments(
        output_dir=source_dir,
        max_steps=model_args.pretrain_steps,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        learning_rate=model_args.pretrain_learning_rate,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        logging_steps=max(1, model_args.pretrain_steps // 10),
        save_strategy="no",
        report_to=[],
        seed=training_args.seed,
        use_cpu=training_args.use_cpu,
        disable_tqdm=training_args.disable_tqdm,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator, processing_class=tokenizer
    )
    trainer.train()
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        trainer.save_model(source_dir)
        return trainer.model.eval(), source_dir
    # These arguments name no FSDP, but an accelerate config with FSDP (`accelerate launch --config_file ...`, its
    # environment) shards this Trainer's model too: the sweep then got the sharded model (a TypeError naming an
    # `FSDPLinear`, or the main process's forward waiting for the other ranks) and a SHARDED_STATE_DICT save wrote no
    # weights into source/. Every rank takes part in gathering the whole weights, the main process writes them, and
    # every rank reloads that folder: a plain model for the sweep and the conversion on each rank.
    from ..utils.distributed import barrier
    from ._common import whole_trained_model

    whole = whole_trained_model(trainer)
    if trainer.is_world_process_zero():
        whole.save_pretrained(source_dir)
        tokenizer.save_pretrained(source_dir)
    barrier()
    source = LlamaForCausalLM.from_pretrained(source_dir, attn_implementation=model_args.attn_implementation)
    return source.eval(), source_dir


# The report files a run writes into --output_dir (a fresh run removes an earlier run's before it starts).
RESULT_FILES = ("results.json", "summary.png", "sweep.json", "sweep.md", "sweep.png")


def run(model_args, data_args, sweep_args, training_args) -> dict:
    """Sweep, convert, fine-tune, save and reload. Returns the results (also written to `results.json`).

    Under a multi-process launch (`torchrun` / `accelerate launch`) pre-training and fine-tuning are data-parallel on
    every rank; the sweep (and its lm-eval scores), the evaluations, the saved model and every file are the main
    process's, and the chosen range is broadcast from it. Other ranks return `{"process_index": rank, "chosen": ...}`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, default_data_collator, set_seed

    import hf_ext  # noqa: F401  (registers the package's architectures)

    from ..data import build_tokenizer, load_text_datasets, pack_dataset
    from ..models.layer_parallel import convert_to_layer_parallel
    from ..models.layer_parallel.configuration_layer_parallel import layer_attention_types
    from ..models.layer_parallel.sweep import (
        choose_range,
        evaluate_causal_lm,
        format_sweep_table,
        pairing_ranges,
        perplexity_sweep,
        save_sweep,
    )
    from ..utils.distributed import barrier, broadcast_object, is_main_process, world_size

    validate_args(model_args, data_args, sweep_args, training_args)
    set_seed(training_args.seed)
    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        from ._common import check_tokenizer_fits_model

        check_tokenizer_fits_model(tokenizer, model_args.model_name_or_path)
    else:
        from ._common import warn_embedded_corpus_tokenizer

        warn_embedded_corpus_tokenizer(
            {"--train_file": data_args.train_file, "--dataset_name": data_args.dataset_name},
            data_args.vocab_size,
            fix="--model_name_or_path (a trained model with its tokenizer)",
        )
        tokenizer = build_tokenizer(data_args.vocab_size)
    train_text, eval_text = load_text_datasets(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_file,
        data_args.validation_file,
        data_args.text_column,
        seed=data_args.validation_split_seed,
    )
    train_ds = pack_dataset(train_text, tokenizer, data_args.block_size, data_args.text_column)
    eval_ds = pack_dataset(eval_text, tokenizer, data_args.block_size, data_args.text_column)
    if len(eval_ds) > data_args.max_eval_blocks:
        eval_ds = eval_ds.select(range(data_args.max_eval_blocks))
    if len(train_ds) == 0 or len(eval_ds) == 0:
        raise ValueError(f"No block of {data_args.block_size} tokens could be formed; lower --block_size.")
    # after the tokenizer and the data (a bad --vocab_size or --text_column fails there): a run refused for a bad
    # argument leaves the earlier run's results alone
    if is_main_process():
        from ._common import clear_previous_results

        clear_previous_results(training_args.output_dir, RESULT_FILES, bool(training_args.resume_from_checkpoint))
        if sweep_args.finetune:
            from ._common import write_run_record  # what a resume of this run must keep (checked in validation)

            record = _run_record(model_args, data_args, training_args)
            resumed = training_args.resume_from_checkpoint or None
            write_run_record(training_args.output_dir, RUN_RECORD_NAME, record, resumed_from=resumed)

    if model_args.model_name_or_path:
        source = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
        ).eval()
        source_dir = model_args.model_name_or_path
    else:
        source, source_dir = _pretrain_small_llama(
            model_args, tokenizer, train_ds, training_args, data_args.block_size
        )
    num_layers = source.config.num_hidden_layers
    bs = training_args.per_device_eval_batch_size
    main = is_main_process()
    results: dict = {
        "source": source_dir, "num_layers": num_layers, "lp_mode": sweep_args.lp_mode,
        "lp_mlp_norm": sweep_args.lp_mlp_norm, "world_size": world_size(),
    }  # fmt: skip

    rows, chosen = None, None
    if not sweep_args.skip_sweep and main:
        ranges = pairing_ranges(
            num_layers,
            parse_pair_counts(sweep_args.pair_counts),
            sweep_args.sweep_stride,
            layer_attention_types(source.config),
        )
        task_eval = _task_eval(sweep_args, tokenizer, bs) if sweep_args.eval_tasks else None
        rows = perplexity_sweep(
            source, eval_ds, ranges, mode=sweep_args.lp_mode, mlp_norm=sweep_args.lp_mlp_norm, batch_size=bs,
            extra_eval=task_eval,
        )  # fmt: skip
        if task_eval is not None:
            _add_retention(rows, sweep_args.eval_metric, task_eval.declared)
            results["eval_tasks"] = {
                "tasks": list(rows[0]["task_scores"]), "metric": sweep_args.eval_metric,
                "num_fewshot": sweep_args.eval_fewshot, "limit": sweep_args.eval_limit,
            }  # fmt: skip
        chosen = choose_range(rows, sweep_args.max_ppl_increase)
        if training_args.resume_from_checkpoint and sweep_args.lp_start is None and chosen is not None:
            _check_checkpoint_pairing(training_args.resume_from_checkpoint, sweep_args, chosen["start"], chosen["end"])
        marked, suggestion = chosen, None
        if sweep_args.lp_start is not None:
            # The range given by --lp_start/--lp_end is the one converted: sweep.md / sweep.json mark and record it
            # (its sweep row, if the sweep measured it); the sweep's own choice is kept as `sweep_suggestion`.
            marked = _converted_row(rows, sweep_args.lp_start, sweep_args.lp_end)
            suggestion = _range_record(chosen)
            results["sweep_suggestion"] = suggestion
        paths = save_sweep(
            rows, training_args.output_dir, marked, task_metric=sweep_args.eval_metric,
            note=_sweep_note(sweep_args, suggestion),
            extra=None if sweep_args.lp_start is None else {"sweep_suggestion": suggestion},
        )  # fmt: skip
        print(format_sweep_table(rows, marked, task_metric=sweep_args.eval_metric))
        print(f"sweep written to {paths['md']} and {paths['png']}")
        results["sweep"] = rows
    if not sweep_args.skip_sweep:
        chosen = broadcast_object(chosen)
    if sweep_args.lp_start is not None:
        start, end = sweep_args.lp_start, sweep_args.lp_end
    elif chosen is not None:
        start, end = chosen["start"], chosen["end"]
    else:
        print(f"no paired range keeps perplexity within +{sweep_args.max_ppl_increase:.0%}; nothing converted.")
        results["chosen"] = None
        if main:
            atomic_write_results(os.path.join(training_args.output_dir, "results.json"), results)
        return results if main else {"process_index": training_args.process_index, "chosen": None}
    results["chosen"] = {"start": start, "end": end, "pairs": (end - start) // 2}

    lp = convert_to_layer_parallel(
        source, start, end, mode=sweep_args.lp_mode, merge=True, mlp_norm=sweep_args.lp_mlp_norm
    )
    if main:
        results["source_eval"] = rows[0] if rows else evaluate_causal_lm(source, eval_ds, bs)
        results["converted_eval"] = evaluate_causal_lm(lp, eval_ds, bs)
        print(
            f"pairs [{start}, {end}): depth {num_layers} -> {lp.config.effective_depth}, perplexity "
            f"{results['source_eval']['perplexity']:.3f} -> {results['converted_eval']['perplexity']:.3f}"
        )

    if sweep_args.finetune:
        trainable = lp.set_pair_finetuning()
        n_train = sum(p.numel() for n, p in lp.named_parameters() if n in set(trainable))
        print(f"fine-tuning {len(trainable)} tensors ({n_train} parameters) of the paired layers; the rest is frozen")
        lp.train()
        from ..utils.evaluation import EvalRowsOnceMixin
        from ..utils.resume import with_loss_window

        class FinetuneTrainer(EvalRowsOnceMixin, Trainer):
            """--eval_strategy: a multi-process evaluate() counts every evaluation block once, as one process does."""

        # its loss window is saved with each checkpoint: a resumed run logs the uninterrupted run's loss curve
        trainer = with_loss_window(FinetuneTrainer)(
            model=lp,
            args=training_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,  # --eval_strategy steps/epoch: eval loss during fine-tuning
            data_collator=default_data_collator,
            processing_class=tokenizer,
        )
        from ..utils.resume import train_or_restore_finished

        # a checkpoint at --max_steps (a run stopped after its last checkpoint) is restored, not trained a step past
        train_result = train_or_restore_finished(trainer, training_args.resume_from_checkpoint)
        from ._common import resumed_at_step, whole_run_train_loss, whole_trained_model

        # under FSDP / DeepSpeed the main process's evaluation, save and reload below need whole weights (its forward
        # on the sharded model alone hung the launch after fine-tuning); every rank takes part in gathering them
        lp = whole_trained_model(trainer)
        lp.set_pair_finetuning(False)
        results["finetune_loss_curve"] = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
        if evals:  # --eval_strategy steps/epoch
            results["finetune_eval_loss_curve"] = evals
        results["finetune_train_loss"] = whole_run_train_loss(
            trainer, train_result.training_loss if train_result else 0.0
        )
        if training_args.resume_from_checkpoint:
            results["finetune_resumed_at_step"] = resumed_at_step(trainer)
        if main:
            results["finetuned_eval"] = evaluate_causal_lm(lp, eval_ds, bs)
            print(f"after fine-tuning: perplexity {results['finetuned_eval']['perplexity']:.3f}")

    save_dir = os.path.join(training_args.output_dir, "layer_parallel_model")
    if not main:  # the model is the main process's to save, reload and report
        barrier()
        return {"process_index": training_args.process_index, "chosen": results["chosen"], "saved_to": save_dir}
    lp.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(save_dir).to(next(lp.parameters()).device)
    results["reloaded_eval"] = evaluate_causal_lm(reloaded, eval_ds, bs)
    final = results.get("finetuned_eval", results["converted_eval"])
    results["reload_matches"] = math.isclose(results["reloaded_eval"]["loss"], final["loss"], rel_tol=1e-5)
    results["saved_to"] = save_dir
    print(f"saved {type(reloaded).__name__} to {save_dir} (reload matches: {results['reload_matches']})")
    atomic_write_results(os.path.join(training_args.output_dir, "results.json"), results)
    if rows is not None:  # the results are on disk before the optional plot
        _plot_summary(results, os.path.join(training_args.output_dir, "summary.png"))
    barrier()
    return results


def _plot_summary(results: dict, path: str) -> None:
    """Bar chart: perplexity of the source, the converted model and the fine-tuned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = ["source"], [results["source_eval"]["perplexity"]]
    names.append(f"paired {results['chosen']['pairs']}")
    values.append(results["converted_eval"]["perplexity"])
    if "finetuned_eval" in results:
        names.append("paired + fine-tuned")
        values.append(results["finetuned_eval"]["perplexity"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, values, color=["tab:gray", "tab:orange", "tab:green"][: len(values)])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("perplexity")
    ax.set_title("layer pairing within the perplexity budget")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args

    model_args, data_args, sweep_args, training_args = parse_recipe_args(
        (
            LayerParallelModelArguments,
            LayerParallelDataArguments,
            LayerParallelSweepArguments,
            LayerParallelTrainingArguments,
        ),
        argv,
    )
    return finish(run(model_args, data_args, sweep_args, training_args))


if __name__ == "__main__":
    main()
