"""Pretrain with and without URL context (metadata conditioning), compare losses, and show guided generation.

Run as `python scripts/metadata_pretrain.py`, `accelerate launch scripts/metadata_pretrain.py` or
`hf-ext run metadata_pretrain`. With no arguments it trains two tiny models on the embedded corpus: one with
`[BOS]<|context_begin|>{url}<|context_end|>{document}` (10% metadata dropout, last 10% of steps without metadata)
and a plain-text baseline, then evaluates the document loss with and without context.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass, field

from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from ..utils.io import atomic_savefig, atomic_write_results, atomic_write_text
from ..utils.resume import train_or_restore_finished
from ._common import refuse_undistributed_launch, validation_split_seed_field
from .pretrain import ModelArguments, build_model, check_config_overrides, check_fresh_model

logger = logging.getLogger(__name__)


def _no_fp8_field(default):
    """A field of pretrain's FP8 flags, hidden from `--help`: this recipe trains without FP8 and refuses the flag set
    to anything but `default` (`check_ignored_flags`), so `--help` does not offer it."""
    return field(default=default, metadata={"help": argparse.SUPPRESS})


@dataclass
class MetadataModelArguments(ModelArguments):
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of a fresh model."})
    intermediate_size: int = field(default=192, metadata={"help": "MLP width of a fresh model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    # pretrain's FP8 flags, inherited with its ModelArguments: not flags of this recipe (both models train without
    # FP8). Hidden from --help (it listed them with pretrain's help and "(default: torchao)"), refused when set to
    # anything but these defaults, which say what the recipe does: no FP8 backend, no FP8 monitor.
    fp8_backend: str = _no_fp8_field("none")
    fp8_recipe: str = _no_fp8_field("tensorwise")
    fp8_scaling: str = _no_fp8_field("delayed")
    fp8_attention: bool = _no_fp8_field(False)
    fp8_monitor_steps: int = _no_fp8_field(0)
    fp8_monitor_action: str = _no_fp8_field("warn")


@dataclass
class MetadataDataArguments:
    dataset: str = field(
        default="corpus",
        metadata={
            "help": "corpus (embedded offline corpus), synthetic (URL host decides the vocabulary) or hub/files "
            "(--dataset_name / --train_file)."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset or local dataset folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "Local .json/.jsonl/.csv/.parquet file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    validation_split_seed: int = validation_split_seed_field()
    text_column: str = field(default="text", metadata={"help": "Column holding the document text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training row (> 0)."})
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to load instead of building one."})
    max_eval_docs: int = field(default=37, metadata={"help": "Evaluate on at most this many documents."})
    synthetic_docs: int = field(default=2000, metadata={"help": "Documents of the synthetic corpus."})


@dataclass
class MetadataArguments:
    template: str | None = field(
        default=None,
        metadata={
            "help": "Metadata template: url, url_host, url_path, topic_format, quality_score, column, format. "
            "Default: url (the full URL, the paper's) with --layout context, url_host (the host, as MeCo) with "
            "--layout meco."
        },
    )
    template_column: str | None = field(
        default=None, metadata={"help": "Column(s) the template reads (comma-separated); default per template."}
    )
    template_format: str | None = field(default=None, metadata={"help": "Format string for --template format."})
    layout: str = field(
        default="context",
        metadata={
            "help": "context (the template's metadata between the <|context_begin|>/<|context_end|> special tokens) "
            "or meco (plain text 'URL: {metadata}' and a blank line; --template defaults to url_host there, so the "
            "prefix is MeCo's 'URL: en.wikipedia.org')."
        },
    )
    metadata_dropout: float = field(default=0.1, metadata={"help": "Share of documents trained without metadata."})
    cooldown_fraction: float = field(
        default=0.1, metadata={"help": "Final share of steps trained without metadata (MeCo: 0.1; 0 disables)."}
    )
    max_metadata_tokens: int | None = field(
        default=32,
        metadata={
            "help": "Keep at most this many metadata tokens; None: no limit (metadata too long for a row then falls "
            "back to its first 50 characters)."
        },
    )
    document_attention: bool = field(
        default=True,
        metadata={
            "help": "Packed documents attend only within themselves (per-document causal mask, MeCo); False "
            "lets them attend to earlier documents of their row."
        },
    )
    run_baseline: bool = field(default=True, metadata={"help": "Also train the plain-text baseline for comparison."})
    doc_eval_steps: int = field(default=20, metadata={"help": "Evaluate the document loss every N steps (curves)."})
    guidance_scale: float = field(
        default=1.5,
        metadata={"help": "Guidance scale of the generation example: a finite number > 0 (1 = no guidance)."},
    )
    guidance_prompt: str = field(default="The", metadata={"help": "Prompt of the generation example."})
    guidance_max_new_tokens: int = field(default=24, metadata={"help": "Tokens generated per example."})
    guidance_samples: int = field(default=16, metadata={"help": "Sampled continuations per setting (synthetic)."})
    eval_tasks: str | None = field(
        default=None,
        metadata={
            "help": "Also evaluate the URL-conditioned model and the baseline with lm-evaluation-harness on these "
            "comma-separated tasks, with and without the document's URL in front of the prompt, at every "
            "--eval_fewshot (e.g. hf_ext_cloze: the packaged offline task whose items carry their URL; needs the eval "
            "extra). Default: off."
        },
    )
    eval_fewshot: str = field(
        default="0,5", metadata={"help": "Comma-separated few-shot counts (the paper's URL gain shows at 5 shots)."}
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many items per task."})
    eval_metric: str = field(default="acc", metadata={"help": "lm-eval metric of the with/without-URL table."})
    eval_batch_size: int = field(default=8, metadata={"help": "lm-eval batch size."})
    eval_url: str | None = field(
        default=None,
        metadata={
            "help": "Fixed URL for the with-URL prompts of tasks whose documents carry none (MeCo's conditional "
            "inference on benchmarks, e.g. https://en.wikipedia.org/); default: such tasks are refused."
        },
    )

    def __post_init__(self):
        # whether --template was left to its layout default (a resume without a run record warns about that default)
        self.template_defaulted = self.template is None
        if self.template is None:  # not given: the layout's own metadata (MeCo conditions on the URL's host)
            self.template = "url_host" if self.layout == "meco" else "url"


@dataclass
class MetadataTrainingArguments(TrainingArguments):
    # not a field: tells the shared --max_steps / --num_train_epochs checks that this recipe has no epoch-based runs
    epoch_based_runs = False
    output_dir: str = field(default="outputs/metadata_pretrain", metadata={"help": "Where models and plots go."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps per run."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Documents per device per step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (int) or fraction of max_steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})
    report_to: str = field(default="none", metadata={"help": "Experiment trackers."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the metadata columns (forced by the recipe)."}
    )


def _template(meta_args: MetadataArguments):
    from ..metadata import metadata_template

    column = None
    if meta_args.template_column:
        parts = [c.strip() for c in meta_args.template_column.split(",") if c.strip()]
        column = parts[0] if len(parts) == 1 else parts
    return metadata_template(meta_args.template, column=column, fmt=meta_args.template_format)


#: pretrain's FP8 flags, inherited with its ModelArguments: this recipe trains both models without FP8 (hidden from
#: --help, refused when set to anything but MetadataModelArguments' defaults).
FP8_FLAGS = ("fp8_backend", "fp8_recipe", "fp8_scaling", "fp8_attention", "fp8_monitor_steps", "fp8_monitor_action")
#: Flags that only the lm-eval comparison (--eval_tasks) reads.
EVAL_FLAGS = ("eval_fewshot", "eval_limit", "eval_metric", "eval_batch_size", "eval_url")


def check_ignored_flags(model_args, data_args, meta_args) -> None:
    """Refuse, by name, a flag set on the command line that this run would ignore."""
    from ._common import changed_from_default
    from .pretrain import check_ignored_model_flags

    for name in changed_from_default(model_args, FP8_FLAGS):
        raise ValueError(
            f"--{name} is an FP8 option of the pretrain recipe; this recipe trains both models without FP8, so it "
            "would be ignored. Drop it (the pretrain recipe, `hf-ext run pretrain`, trains in FP8)."
        )
    check_ignored_model_flags(model_args, data_args)
    sources = [
        n for n in ("dataset_name", "dataset_config_name", "train_file", "validation_file") if getattr(data_args, n)
    ]
    if data_args.dataset == "synthetic":
        if sources:
            raise ValueError(
                f"--{sources[0]} would be ignored: --dataset synthetic generates its documents (and their held-out "
                "split); drop it or use --dataset hub (--dataset_name) / files (--train_file)."
            )
    elif changed_from_default(data_args, ["synthetic_docs"]):
        raise ValueError(f"--synthetic_docs only applies to --dataset synthetic (got --dataset {data_args.dataset}).")
    elif changed_from_default(meta_args, ["guidance_samples"]):
        raise ValueError(
            "--guidance_samples sets the sampled continuations of the synthetic corpus' steering measure; it only "
            f"applies to --dataset synthetic (got --dataset {data_args.dataset})."
        )
    if data_args.dataset == "hub" and not data_args.dataset_name:
        raise ValueError("--dataset hub needs --dataset_name (a hub dataset or a local dataset folder).")
    if data_args.dataset == "files" and not data_args.train_file:
        raise ValueError("--dataset files needs --train_file (a local .json/.jsonl/.csv/.parquet file).")
    if meta_args.eval_tasks is None:
        for name in changed_from_default(meta_args, EVAL_FLAGS):
            raise ValueError(f"--{name} only applies to the lm-eval comparison; pass --eval_tasks or drop it.")


def validate_args(model_args, data_args, meta_args, training_args) -> None:
    """Check every argument before data is loaded or anything is written."""
    from ..metadata.encoding import LAYOUTS
    from ..metadata.templates import TEMPLATE_KINDS
    from ._common import check_model_tokenizer_files, check_vocab_size

    if data_args.dataset not in ("corpus", "synthetic", "hub", "files"):
        raise ValueError(f"--dataset must be corpus, synthetic, hub or files, got {data_args.dataset!r}.")
    if data_args.block_size <= 0:
        raise ValueError(f"--block_size must be a positive number of tokens, got {data_args.block_size}.")
    loaded = data_args.tokenizer_name or model_args.model_name_or_path
    if data_args.dataset != "synthetic":
        check_vocab_size(data_args.vocab_size, loaded)
    elif not loaded:  # the synthetic data's tokenizer has max(1500, --vocab_size // 2) tokens
        from ..data.tokenizer import MAX_VOCAB_SIZE

        if max(1500, data_args.vocab_size // 2) > MAX_VOCAB_SIZE:
            raise ValueError(
                f"--vocab_size {data_args.vocab_size}: the synthetic data's tokenizer gets --vocab_size // 2 = "
                f"{data_args.vocab_size // 2} tokens, above the {MAX_VOCAB_SIZE} (2**20) the BPE trainer is allowed; "
                f"pass --vocab_size <= {2 * MAX_VOCAB_SIZE + 1}."
            )
    if meta_args.layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {LAYOUTS}, got {meta_args.layout!r}.")
    if meta_args.template not in TEMPLATE_KINDS:  # the template factory named its own parameter, `kind`, not the flag
        raise ValueError(
            f"--template must be one of {', '.join(TEMPLATE_KINDS)}, got {meta_args.template!r} (for a column of your "
            "data use --template column --template_column NAME)."
        )
    if not 0.0 <= meta_args.metadata_dropout <= 1.0:
        raise ValueError(f"--metadata_dropout must be in [0, 1], got {meta_args.metadata_dropout}.")
    if not 0.0 <= meta_args.cooldown_fraction < 1.0:
        raise ValueError(f"--cooldown_fraction must be in [0, 1), got {meta_args.cooldown_fraction}.")
    if meta_args.cooldown_fraction > 0 and training_args.dataloader_num_workers:
        # MetadataCooldownCallback refuses it when training begins, after the run record and folders are written
        raise ValueError(
            f"--dataloader_num_workers {training_args.dataloader_num_workers} cannot be used with --cooldown_fraction "
            f"{meta_args.cooldown_fraction}: the cooldown switches the main process's collator, which worker "
            "processes do not share. Pass --dataloader_num_workers 0 (the default) or --cooldown_fraction 0."
        )
    if not math.isfinite(meta_args.guidance_scale) or meta_args.guidance_scale <= 0:
        # the one check of this flag (not in the recipes' shared non-negative flags, whose ">= 0" admits 0)
        raise ValueError(
            f"--guidance_scale must be a finite number > 0 (1 = no guidance), got {meta_args.guidance_scale}."
        )
    if meta_args.doc_eval_steps <= 0:
        raise ValueError("--doc_eval_steps must be positive.")
    docs = data_args.synthetic_docs
    if data_args.dataset == "synthetic" and (isinstance(docs, bool) or not isinstance(docs, int) or docs < 2):
        # 10% of the documents are held out (at least one) and at least one must be left to train on; below 2 the
        # corpus builder (naming its own `num_docs`) or datasets' train_test_split refused it with their own message
        raise ValueError(
            f"--synthetic_docs must be at least 2 (one held-out document, 10% of them, and at least one to train on), "
            f"got {docs!r}."
        )
    for flag, value, what in (
        ("--max_eval_docs", data_args.max_eval_docs, "held-out documents to evaluate"),
        ("--guidance_max_new_tokens", meta_args.guidance_max_new_tokens, "tokens to generate per example"),
        ("--guidance_samples", meta_args.guidance_samples, "sampled continuations per setting"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a positive number of {what}, got {value!r}.")
    max_meta = meta_args.max_metadata_tokens
    if max_meta is not None and (isinstance(max_meta, bool) or not isinstance(max_meta, int) or max_meta < 1):
        raise ValueError(
            f"--max_metadata_tokens must be a positive number of tokens (or None for no limit), got {max_meta!r}."
        )
    check_ignored_flags(model_args, data_args, meta_args)
    check_model_tokenizer_files(model_args.model_name_or_path, data_args.tokenizer_name, tokenizer_flag=True)
    if meta_args.template == "format" and meta_args.template_column:
        raise ValueError("--template_column is not read by --template format: the fields of --template_format name the "
                         "columns; drop --template_column.")  # fmt: skip
    if meta_args.template != "format" and meta_args.template_format is not None:
        raise ValueError(f"--template_format only applies to --template format (got --template {meta_args.template}).")
    # The longest prefix a training or evaluation row can get: BOS (+ both markers) + the cut metadata (the meco
    # cut includes "URL: " and the separator). A row needs it plus one document token.
    markers = 3 if meta_args.layout == "context" else 1
    longest = markers + (max_meta or 0)
    if data_args.block_size <= longest:
        limit = (
            f"--max_metadata_tokens {max_meta}"
            if max_meta
            else "the empty context (--max_metadata_tokens unset, so longer metadata may still not fit)"
        )
        raise ValueError(
            f"--block_size {data_args.block_size} leaves no room for a document after a {longest}-token prefix "
            f"({limit}, layout {meta_args.layout!r}); use --block_size > {longest} or a smaller --max_metadata_tokens."
        )
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError("--max_steps must be set (the cooldown is a fraction of it).")
    refuse_undistributed_launch(training_args, "metadata_pretrain")  # N ranks that would each train alone
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if strategy != "no":  # the Trainer refused it when built, after the run record was written
        raise ValueError(
            f"--eval_strategy {strategy}: this recipe passes the Trainer no eval_dataset; it evaluates the held-out "
            "document loss itself every --doc_eval_steps (and at the end). Drop --eval_strategy and set "
            "--doc_eval_steps instead."
        )
    # pretrain's checks of --config_overrides (known fields of the right type, no key twice, positions for a block,
    # a fresh model only): unchecked here, a mistyped key was stored as an unused config attribute and ignored
    check_config_overrides(model_args, data_args.block_size)
    if model_args.model_name_or_path is None:
        if model_args.hidden_size % model_args.num_attention_heads:
            raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
        check_fresh_model(model_args, data_args.block_size)
    try:
        template = _template(meta_args)
    except ValueError as err:  # metadata_template names its parameters (kind, column, fmt), not this recipe's flags
        given = [f"--template {meta_args.template}"]
        given += [
            f"--{n} {getattr(meta_args, n)!r}"
            for n in ("template_column", "template_format")
            if getattr(meta_args, n) is not None
        ]
        raise ValueError(
            f"{' '.join(given)}: {err} (kind, column and fmt are --template, --template_column (comma-separated "
            "column names) and --template_format.)"
        ) from err
    if meta_args.eval_tasks is not None:
        from ..evaluation.harness import check_fewshot_pool
        from ..evaluation.prompting import check_eval_tasks, parse_shots

        shots = parse_shots(meta_args.eval_fewshot, "--eval_fewshot")
        if meta_args.eval_limit is not None and meta_args.eval_limit < 1:
            raise ValueError(f"--eval_limit must be >= 1 (items per task), got {meta_args.eval_limit}.")
        if meta_args.eval_url is not None and not meta_args.eval_url.strip():
            raise ValueError("--eval_url must be a URL such as https://en.wikipedia.org/ (or left unset).")
        names = check_eval_tasks(meta_args.eval_tasks, "--eval_tasks", metric=meta_args.eval_metric,
                                 require_fields=() if meta_args.eval_url else template.columns,
                                 prefixed=True)  # fmt: skip
        check_fewshot_pool(names, shots, "--eval_fewshot")
    if training_args.remove_unused_columns:
        logger.warning("remove_unused_columns=True would drop the metadata columns; the recipe sets it to False.")
        training_args.remove_unused_columns = False
    if training_args.restore_callback_states_from_checkpoint:
        logger.warning(
            "the recipe's document-loss callback restores its curve from the checkpoint itself; "
            "--restore_callback_states_from_checkpoint is set to False (it would rebuild the callback without its "
            "collator and documents)."
        )
        training_args.restore_callback_states_from_checkpoint = False
    if os.path.exists(training_args.output_dir) and not os.path.isdir(training_args.output_dir):
        raise ValueError(f"--output_dir={training_args.output_dir!r} exists and is not a folder.")


def load_documents(data_args: MetadataDataArguments, seed: int):
    """(train, eval, domain_vocab) where domain_vocab is only known for the synthetic corpus."""
    from ..data import load_text_datasets

    if data_args.dataset == "synthetic":
        from ..metadata import synthetic_url_corpus

        ds, vocab = synthetic_url_corpus(num_docs=data_args.synthetic_docs, seed=seed)
        split = ds.train_test_split(test_size=0.1, seed=seed)
        return split["train"], split["test"], vocab
    # The embedded corpus (neither --dataset_name nor --train_file) comes through load_text_datasets too, so a
    # --validation_file replaces its held-out split.
    train, valid = load_text_datasets(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_file,
        data_args.validation_file,
        data_args.text_column,
        seed=data_args.validation_split_seed,
    )
    return train, valid, None


def document_loss(model, collator, docs: list[dict], batch_size: int = 16) -> float:
    """Token-weighted next-token loss over document tokens only (BOS and context are masked by the collator)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(docs), batch_size):
            batch = collator(docs[start : start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            target = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((target != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


class DocumentLossCallback(TrainerCallback, ExportableState):
    """Evaluates the document loss every `eval_steps` optimizer steps (for curves and steps-to-match).

    With `empty_collator` (the URL-conditioned run: the same documents in the empty-context form) it also records
    `empty_curve`, the loss without metadata at the same steps: what a benchmark without URLs sees, and what the
    speed-up is judged on (with its URL the model is handed test-time information the baseline never gets).

    The curves are checkpoint state: as an `ExportableState` they are saved in each checkpoint's `trainer_state.json`
    (`stateful_callbacks`), and on `resume_from_checkpoint` the callback takes the points up to the checkpoint's step
    back from there, so a resumed run ends with the same curves as an uninterrupted one. It restores itself in place
    in `on_train_begin` (the Trainer's `restore_callback_states_from_checkpoint` would rebuild it from JSON arguments,
    which cannot hold the collator and the documents; the recipe turns that flag off).
    """

    def __init__(self, collator, docs: list[dict], eval_steps: int, run: str | None = None, empty_collator=None):
        self.collator, self.docs, self.eval_steps = collator, docs, eval_steps
        self.run = run  # url_conditioned or baseline: saved in each checkpoint as the mark of the run it belongs to
        self.empty_collator = empty_collator
        self.curve: list[tuple[int, float]] = []
        self.empty_curve: list[tuple[int, float]] = []

    def state(self) -> dict:
        attributes = {"curve": [list(p) for p in self.curve]}
        if self.empty_collator is not None:
            attributes["empty_curve"] = [list(p) for p in self.empty_curve]
        if self.run is not None:
            attributes["run"] = self.run
        return {"args": {"eval_steps": self.eval_steps}, "attributes": attributes}

    def on_train_begin(self, args, state, control, **kwargs):
        name = type(self).__name__
        saved = state.stateful_callbacks.get(name) if state.stateful_callbacks is not None else None
        if state.global_step == 0:  # a fresh run
            self.curve, self.empty_curve = [], []
            return
        if isinstance(saved, list):  # several callbacks of this class: the recipe has one
            saved = saved[0] if saved else None
        if saved is None:  # a checkpoint written without the curve: the points before it are unknown
            logger.warning(
                "the checkpoint at step %d holds no document-loss curve; the curve starts after it.", state.global_step
            )
            self.curve, self.empty_curve = [], []
            state.stateful_callbacks[name] = self.state()  # the Trainer updates this entry at every save
            return

        def restored(points):
            return [(int(step), float(loss)) for step, loss in points if step <= state.global_step]

        attributes = saved.get("attributes", {})
        self.curve = restored(attributes.get("curve", []))
        self.empty_curve = restored(attributes.get("empty_curve", []))
        if self.empty_collator is not None and "empty_curve" not in attributes:
            logger.warning(
                "the checkpoint at step %d holds no empty-context document-loss curve (written before hf_ext recorded "
                "it); that curve starts after it, and its steps-to-match is not reported.",
                state.global_step,
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0 or state.global_step == state.max_steps:
            self.curve.append((state.global_step, document_loss(model, self.collator, self.docs)))
            if self.empty_collator is not None:
                self.empty_curve.append((state.global_step, document_loss(model, self.empty_collator, self.docs)))


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose loss is at or below `target`."""
    return next((step for step, loss in curve if loss <= target), None)


SUB_RUNS = ("url_conditioned", "baseline")


def checkpoint_run(checkpoint: str) -> str | None:
    """Which of the recipe's runs (`url_conditioned` or `baseline`) wrote `checkpoint`: the mark the recipe saves in
    its `trainer_state.json` (the document-loss callback's state), else the name of the run folder that holds it
    (`<output_dir>/<run>/checkpoint-N`); `None` when neither tells."""
    import json

    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as fh:
            saved = (json.load(fh).get("stateful_callbacks") or {}).get(DocumentLossCallback.__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        mark = (saved or {}).get("attributes", {}).get("run")
    except (OSError, ValueError, AttributeError):
        mark = None
    if mark in SUB_RUNS:
        return mark
    # the folder that holds it as named (a checkpoint moved elsewhere and linked back), else its resolved path's
    named, resolved = (os.path.basename(os.path.dirname(f(checkpoint))) for f in (os.path.abspath, os.path.realpath))
    return named if named in SUB_RUNS else resolved if resolved in SUB_RUNS else None


def _sub_run_resume(value, sub_output_dir: str, name: str) -> str | None:
    """The checkpoint the run `name` (`url_conditioned` or `baseline`) resumes from: with `last`, its newest complete
    checkpoint in its own folder (a run that saved none starts afresh); a named checkpoint folder resumes the run it
    belongs to (`checkpoint_run`), and the other run continues from its own newest checkpoint, as with `last`."""
    from ..utils.resume import last_complete_checkpoint, resolve_resume_checkpoint, wants_last, wants_resume

    if not wants_resume(value):
        return None
    if wants_last(value):
        return last_complete_checkpoint(sub_output_dir)
    checkpoint = resolve_resume_checkpoint(value, sub_output_dir)
    return checkpoint if checkpoint_run(checkpoint) == name else last_complete_checkpoint(sub_output_dir)


def eval_document_tokens(tokenizer, template, data_args, meta_args, eval_docs: list[dict]) -> int:
    """How many tokens of each held-out document every evaluation scores: the row (`--block_size`) less the longest
    metadata prefix among them (BOS, context markers, metadata). With a common cut, the URL model with its URL, with
    the empty context and the plain-text baseline are compared on the same document tokens; a cut of the whole row
    gave a long URL's document up to ~30 fewer (late, lower-loss) tokens than the others."""
    from ..metadata import MetadataCollator

    probe = MetadataCollator(
        tokenizer,
        template,
        text_column=data_args.text_column,
        layout=meta_args.layout,
        metadata_dropout=0.0,
        max_length=data_args.block_size,
        max_metadata_tokens=meta_args.max_metadata_tokens,
    )
    longest = max((doc.prefix_length for doc in probe.encode(eval_docs)), default=1)
    return max(1, data_args.block_size - longest)


def _check_template_applies(template, train, meta_args, rows: int = 64) -> None:
    """Refuse, before any write, a template that fails on every one of the first `rows` training documents (e.g. a
    `--template_format` whose spec does not suit the column's values): each document would train without metadata,
    and the "URL-conditioned" model would be a second baseline."""
    from ..metadata import InvalidMetadataError

    first_error = None
    for row in train.select(range(min(rows, len(train)))):
        try:
            template(row)
            return
        except InvalidMetadataError as err:
            first_error = first_error or err
    if first_error is not None:
        raise ValueError(
            f"--template {meta_args.template} fails on every one of the first {min(rows, len(train))} training "
            f"documents ({first_error}); every document would train without metadata. Fix --template_format / "
            "--template_column, or check the metadata column."
        )


def _train_one(
    name, conditioned, model_args, data_args, meta_args, training_args, tokenizer, train, eval_docs, doc_tokens=None
):
    from transformers import set_seed

    from ..metadata import MetadataCollator, MetadataCooldownCallback, MetadataTrainer

    template = _template(meta_args)
    sub_output_dir = os.path.join(training_args.output_dir, name)
    checkpoint = _sub_run_resume(training_args.resume_from_checkpoint, sub_output_dir, name)
    config_updates = None  # a resumed fresh model: the checkpoint's config entries the flags now set otherwise
    if checkpoint is not None and not model_args.model_name_or_path:
        from .pretrain import resumed_config_updates

        meta_model = build_model(model_args, tokenizer, data_args.block_size, meta=True)
        config_updates = resumed_config_updates(meta_model.config, checkpoint)
    set_seed(training_args.seed)
    model = build_model(model_args, tokenizer, data_args.block_size, config_updates=config_updates)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    common = dict(text_column=data_args.text_column, max_metadata_tokens=meta_args.max_metadata_tokens)
    if conditioned:
        collator = MetadataCollator(
            tokenizer,
            template,
            layout=meta_args.layout,
            metadata_dropout=meta_args.metadata_dropout,
            block_size=data_args.block_size,
            seed=training_args.seed,
            document_attention=meta_args.document_attention,
            **common,
        )
        evaluation = dict(
            layout=meta_args.layout,
            max_length=data_args.block_size,
            max_document_tokens=doc_tokens,
            padding_side="right",
            **common,
        )
        eval_collator = MetadataCollator(tokenizer, template, metadata_dropout=0.0, **evaluation)
        # the same documents in the empty-context form: the URL model as a benchmark without URLs sees it
        empty_collator = MetadataCollator(tokenizer, template, metadata_dropout=1.0, **evaluation)
    else:  # plain text: [BOS] document [EOS]
        collator = MetadataCollator(
            tokenizer,
            template,
            layout="meco",
            metadata_dropout=1.0,
            block_size=data_args.block_size,
            document_attention=meta_args.document_attention,
            **common,
        )
        eval_collator = MetadataCollator(
            tokenizer,
            template,
            layout="meco",
            metadata_dropout=1.0,
            max_length=data_args.block_size,
            max_document_tokens=doc_tokens,
            padding_side="right",
            **common,
        )
        empty_collator = None  # the baseline never sees metadata: its curve is already the empty-context one
    callbacks = [
        DocumentLossCallback(
            eval_collator, eval_docs, meta_args.doc_eval_steps, run=name, empty_collator=empty_collator
        )
    ]
    if conditioned and meta_args.cooldown_fraction > 0:
        callbacks.append(MetadataCooldownCallback(collator, meta_args.cooldown_fraction))
    args = training_args.__class__(**{**training_args.to_dict(), "output_dir": sub_output_dir})
    trainer = MetadataTrainer(  # a Trainer that writes the cooldown state into each checkpoint before it is complete
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # a finished run is restored, not trained a step past --max_steps
    train_or_restore_finished(trainer, checkpoint)
    trainer.save_model(args.output_dir)
    from ._common import whole_trained_model

    return whole_trained_model(trainer), callbacks[0].curve, trainer.state.log_history, callbacks[0].empty_curve


def _domain_token_share(tokenizer, texts: list[str], words: list[str]) -> float:
    vocab = set(words)
    tokens = [w for t in texts for w in t.split()]
    return sum(w in vocab for w in tokens) / max(len(tokens), 1)


def _prompt_prefixes(tokenizer, template, meta_args) -> dict:
    """The start of every lm-eval prompt, per model and condition, in the token layout the model was trained with.

    Decoded from `MetadataEncoder.prefix_ids` (so the metadata is cut to `--max_metadata_tokens` as in training):
    with the URL, `[BOS]<|context_begin|>{url}<|context_end|>` (context layout) or `[BOS]URL: {url}\n\n` (meco);
    without it, each model's own unconditional form: the URL-conditioned model's dropped-metadata prefix (the empty
    context pair, or plain `[BOS]` in the meco layout) and the baseline's plain `[BOS]`. Both models get the same
    with-URL prompts. Documents without the template's columns get `--eval_url` (a fixed URL, as MeCo prompts
    benchmarks).
    """
    from ..metadata import InvalidMetadataError, MetadataEncoder

    encoder = MetadataEncoder(tokenizer, layout=meta_args.layout, max_metadata_tokens=meta_args.max_metadata_tokens)

    def decode(metadata):
        ids = encoder.prefix_ids([metadata or None])[0]
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def with_url(doc: dict) -> str:
        if meta_args.eval_url and any(c not in doc for c in template.columns):  # a task without URLs: a fixed one
            doc = {**doc, **{c: meta_args.eval_url for c in template.columns if c not in doc}}
        try:
            return decode(template(doc))
        except InvalidMetadataError:  # an unusable value is no metadata, as in training
            return decode(None)

    bos = tokenizer.decode([tokenizer.bos_token_id])
    return {
        ("url_conditioned", False): decode(None),
        ("url_conditioned", True): with_url,
        ("baseline", False): bos,
        ("baseline", True): with_url,
    }


def _host_docs(eval_docs: list, domain_vocab) -> dict:
    """Synthetic corpus: host -> its first held-out document (the steering measure's metadata), for the hosts that
    have one; `{}` without a domain vocabulary."""
    docs = {}
    for host in sorted(domain_vocab or ()):
        doc = next((d for d in eval_docs if d["url"].split("//")[1].split(".")[0] == host), None)
        if doc is not None:
            docs[host] = doc
    return docs


def _guidance_docs(eval_docs: list, domain_vocab) -> list:
    """The held-out documents whose metadata guided generation conditions on: the first one (the example), and on the
    synthetic corpus the first of each host (the steering measure, `_host_docs`)."""
    return [*eval_docs[:1], *_host_docs(eval_docs, domain_vocab).values()]


_PROBE_VOCAB = 256  # rows of the embedding of `check_documents_kept_apart`'s probe model
#: Per-layer lists of a config (one entry per layer), cut with the layers of `check_documents_kept_apart`'s probe.
_PER_LAYER_LISTS = ("layer_types", "layers_block_type", "mlp_layer_types")


def _layer_types(config) -> set:
    """The distinct layer types a config names (`layer_types` / `layers_block_type`: attention, Mamba, linear
    attention, short convolution, ...), as `(attribute, type)` pairs; empty for a config that names none."""
    found = set()
    for name in ("layer_types", "layers_block_type"):
        value = getattr(config, name, None)
        if isinstance(value, list | tuple):
            found |= {(name, t) for t in value if isinstance(t, str)}
    return found


def _probe_layers(config) -> int:
    """The fewest first layers of `config` that hold every distinct layer type it names: 1 where it names none or all
    layers are alike; e.g. 2 for a hybrid of attention layer 0 and Mamba layer 1 (Jamba with attn_layer_offset=0),
    where one layer would hold no Mamba mixer at all."""
    needed = 1
    for name in ("layer_types", "layers_block_type"):
        value = getattr(config, name, None)
        if isinstance(value, list | tuple):
            first = {}
            for i, t in enumerate(value):
                first.setdefault(t, i)
            needed = max(needed, *(i + 1 for i in first.values()))
    return needed


def _cut_layers(config, layers: int) -> None:
    """Keep the first `layers` layers of `config`: `num_hidden_layers` and the per-layer lists it stores (a list a
    property derives from `num_hidden_layers`, Jamba's / Bamba's `layer_types`, follows by itself)."""
    from ..utils.checks import is_int

    total = config.num_hidden_layers
    if not is_int(total) or total <= layers:
        return
    config.num_hidden_layers = layers
    for name in _PER_LAYER_LISTS:
        value = vars(config).get(name)
        if isinstance(value, list | tuple) and len(value) == total:
            setattr(config, name, list(value[:layers]))


def check_documents_kept_apart(model_args, data_args, meta_args, tokenizer) -> None:
    """Refuse, before any write, `--document_attention true` (the default) for a model type whose causal mask ignores
    the restarting `position_ids` of packed rows (OPT, Bloom, MPT, BioGPT, XGLM): `MetadataCollator.check_model`
    refuses it when training begins, after the run record and folders are written. The probe
    (`check_document_attention`) runs on the first layers of the same config with fresh weights (the mask is the
    architecture's, not the weights', nor the vocabulary's: at most 256 rows): one layer, or as many as it takes to hold
    every distinct layer type the config names (`_probe_layers`), so a hybrid whose first layer is attention still
    has its Mamba / linear-attention / convolution layer, whose state carries a document into the next one. A config
    that cannot be cut so is left to the check at training."""
    if not meta_args.document_attention:
        return
    import torch
    from transformers import AutoModelForCausalLM

    from ..metadata.collator import check_document_attention
    from ..utils.checks import is_int
    from .pretrain import _model_config

    config = _model_config(model_args, tokenizer, data_args.block_size)
    try:
        types = _layer_types(config)
        _cut_layers(config, _probe_layers(config))
        if _layer_types(config) != types:  # a config whose layer types do not follow its first layers
            raise ValueError(f"the cut config's layer types {_layer_types(config)} are not the model's {types}")
        # and a small vocabulary: the mask does not depend on it, and with a pretrained model's (Llama 3: 128256 rows
        # of 4096) a one-layer probe had 1.27B parameters, 2 minutes and 5.6 GB to build on each process's CPU
        if is_int(getattr(config, "vocab_size", None)) and config.vocab_size > _PROBE_VOCAB:
            config.vocab_size = _PROBE_VOCAB
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if is_int(getattr(config, name, None)) and getattr(config, name) >= _PROBE_VOCAB:
                    setattr(config, name, None)  # an embedding's padding_idx must be one of its rows
        with torch.random.fork_rng(devices=[]):  # the run's seeded initialisation stays the run's
            torch.manual_seed(0)
            probe = AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)
    except Exception as err:  # noqa: BLE001 - the check at training start still runs on the real model
        logger.debug("document_attention pre-check skipped: %s", err)
        return
    check_document_attention(probe)  # its error names the recipe's --document_attention false


def check_guidance_fits(model_args, data_args, meta_args, tokenizer, template, eval_ds, domain_vocab=None) -> None:
    """Refuse, before any write, a guided-generation example longer than the positions of a model with learned
    absolute positions (GPT-2 family): the longest guidance prompt (`[BOS]` + the context of a held-out document that
    generation conditions on (`_guidance_docs`), as training cut it, + `--guidance_prompt`) plus
    `--guidance_max_new_tokens` must fit its `max_position_embeddings`; generation failed there with a raw `IndexError`
    after both models were trained, before any result was written. Rotary models (the default FOG, Llama) have no such
    table and are not limited here."""
    from ..metadata import InvalidMetadataError, MetadataEncoder
    from ..metadata.generation import _padding_invariant_positions

    model = build_model(model_args, tokenizer, data_args.block_size, meta=True)
    positions = getattr(model.config, "max_position_embeddings", None)
    if _padding_invariant_positions(model) or not isinstance(positions, int):
        return
    encoder = MetadataEncoder(tokenizer, layout=meta_args.layout, add_eos=False,
                              max_metadata_tokens=meta_args.max_metadata_tokens)  # fmt: skip

    def metadata(doc):
        try:
            return template(doc) or None
        except InvalidMetadataError:
            return None

    docs = [dict(r) for r in eval_ds.select(range(min(len(eval_ds), data_args.max_eval_docs)))]
    docs = _guidance_docs(docs, domain_vocab)  # not every held-out document: those generation reads
    prefixes = encoder.encode_batch([meta_args.guidance_prompt] * len(docs), [metadata(d) for d in docs])
    longest = max((len(d.input_ids) for d in prefixes), default=0)
    # generate() feeds the prompt and every new token but the last: positions 0 .. longest + new - 2
    if longest + meta_args.guidance_max_new_tokens - 1 > positions:
        raise ValueError(
            f"--guidance_max_new_tokens {meta_args.guidance_max_new_tokens}: the guided-generation example's longest "
            f"prompt ({longest} tokens: BOS, a held-out document's metadata context and --guidance_prompt) plus the "
            f"new tokens (all but the last fed back to the model) exceed the {positions} positions of the "
            f"{type(model).__name__} model (learned absolute positions); use --guidance_max_new_tokens <= "
            f"{max(positions - longest + 1, 0)} or a shorter --guidance_prompt."
        )


def check_eval_prompts_fit(model_args, data_args, meta_args, tokenizer, template) -> None:
    """Refuse, before training, an `--eval_tasks` / `--eval_fewshot` setting that `evaluate_tasks_with_and_without_url`
    would refuse after it: a prompt longer than the model's context, which lm-eval would cut from the left, URL first.

    Each model x URL x shot count of that evaluation is checked with `check_prefix_fits` (the prompts lm-eval builds,
    encoded and limited as `evaluate_with_prefix` encodes and limits them) on the model built on the meta device from
    the config the recipe trains (the context length lm-eval's `HFLM` reads from it), with the same prefixes,
    `--eval_limit`, seed and `encode_prefix_apart=True`. A `ValueError` naming `--eval_fewshot` and the count.
    """
    from ..evaluation.prompting import check_prefix_fits, parse_shots

    model = build_model(model_args, tokenizer, data_args.block_size, meta=True)
    tasks = [t.strip() for t in meta_args.eval_tasks.split(",")]
    prefixes = _prompt_prefixes(tokenizer, template, meta_args)
    checked: list = []  # a prefix two conditions share (the with-URL one, the meco layout's plain BOS) once
    for name in ("url_conditioned", "baseline") if meta_args.run_baseline else ("url_conditioned",):
        for url in (False, True):
            prefix = prefixes[(name, url)]
            if any(prefix is p or (isinstance(p, str) and prefix == p) for p in checked):
                continue
            checked.append(prefix)
            for k in parse_shots(meta_args.eval_fewshot):
                try:
                    check_prefix_fits(model, tokenizer, tasks, prefix=prefix, num_fewshot=k,
                                      limit=meta_args.eval_limit, encode_prefix_apart=True)  # fmt: skip
                except ValueError as err:
                    raise ValueError(
                        f"--eval_fewshot {k} (--eval_tasks {meta_args.eval_tasks}, the {name} model "
                        f"{'with' if url else 'without'} the URL), checked before training: {err}"
                    ) from err


def evaluate_tasks_with_and_without_url(models: dict, tokenizer, template, meta_args) -> dict:
    """lm-eval on `--eval_tasks` for every model x URL at inference (without, with) x `--eval_fewshot` count.

    Returns:
        `dict` with `rows` (one per model, condition, shots, task and metric: `results_rows` plus `url`), `table` (one
        per metric, model, shots and task, `--eval_metric` first: the value without and with the URL and the
        difference) and the settings.
    """
    from ..evaluation import results_rows
    from ..evaluation.prompting import evaluate_with_prefix, parse_shots

    tasks = [t.strip() for t in meta_args.eval_tasks.split(",")]
    shots = parse_shots(meta_args.eval_fewshot)
    prefixes = _prompt_prefixes(tokenizer, template, meta_args)
    rows = []
    for name, model in models.items():
        model.eval()
        for url in (False, True):
            for k in shots:
                res = evaluate_with_prefix(
                    model, tokenizer, tasks, prefix=prefixes[(name, url)], num_fewshot=k, limit=meta_args.eval_limit,
                    batch_size=meta_args.eval_batch_size, encode_prefix_apart=True,
                )  # fmt: skip
                rows += [{**r, "num_fewshot": k, "url": url} for r in results_rows(res, name=name)]
    metric = meta_args.eval_metric
    metrics = [metric, *sorted({r["metric"] for r in rows} - {metric})]  # --eval_metric first, then the others
    table = []
    for m in metrics:
        for name in models:
            for k in shots:
                for task in tasks:
                    pick = {r["url"]: r for r in rows if (r["model"], r["num_fewshot"], r["task"], r["metric"]) ==
                            (name, k, task, m)}  # fmt: skip
                    if len(pick) == 2:
                        without, with_ = pick[False]["value"], pick[True]["value"]
                        table.append({"model": name, "num_fewshot": k, "task": task, "metric": m,
                                      "without_url": without, "with_url": with_, "gain": with_ - without,
                                      "n": pick[True]["n"]})  # fmt: skip
    return {"tasks": tasks, "metric": metric, "shots": shots, "limit": meta_args.eval_limit, "rows": rows,
            "table": table}  # fmt: skip


def format_task_table(task_eval: dict) -> str:
    """Markdown table: each task metric without and with the URL in the prompt, per model and shot count."""
    lines = ["| model | shots | task | metric | without URL | with URL | with - without | items |",
             "|---|---:|---|---|---:|---:|---:|---:|"]  # fmt: skip

    def num(v: float, sign: str = "") -> str:  # accuracies with 4 decimals, perplexities in 4 significant digits
        return f"{v:{sign}.4f}" if abs(v) < 100 else f"{v:{sign}.4g}"

    for r in task_eval["table"]:
        lines.append(
            f"| {r['model']} | {r['num_fewshot']} | {r['task']} | {r['metric']} | {num(r['without_url'])} | "
            f"{num(r['with_url'])} | {num(r['gain'], '+')} | {r['n'] if r['n'] is not None else ''} |"
        )
    return "\n".join(lines)


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in results["curves"].items():
        if curve:
            ax.plot(*zip(*curve), marker="o", markersize=3, label=name)
    if results.get("cooldown_start_step"):
        ax.axvline(results["cooldown_start_step"], color="grey", ls="--", lw=1, label="cooldown starts")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out document loss")
    ax.set_title("Metadata conditioning: document loss")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


#: The report files a run writes at its end (removed at the start of a fresh run into the same folder).
RESULT_FILES = ("metadata_results.json", "task_eval.md", "document_loss.png")


def _check_resume(training_args, run_baseline: bool = True) -> None:
    """`--resume_from_checkpoint` before any work: `last` needs a checkpoint in one of the two run folders; a named
    checkpoint must belong to one of the runs trained; no checkpoint may lie beyond --max_steps; a fresh run refuses
    run folders that hold an earlier run's checkpoints."""
    from ..utils.resume import (
        check_checkpoint_folders,
        last_complete_checkpoint,
        resolve_resume_checkpoint,
        wants_last,
        wants_resume,
    )

    value = training_args.resume_from_checkpoint
    names = [n for n in SUB_RUNS if run_baseline or n != "baseline"]
    runs = [os.path.join(training_args.output_dir, name) for name in names]
    if not wants_resume(value):
        check_checkpoint_folders(value, runs)
        training_args.resume_from_checkpoint = None
        return
    if wants_last(value):
        if not any(last_complete_checkpoint(r) for r in runs):
            raise ValueError(
                f"--resume_from_checkpoint asks for the last checkpoint, but neither run folder in --output_dir="
                f"{training_args.output_dir!r} (url_conditioned/, baseline/) holds a complete checkpoint-N; drop the "
                "flag to start from scratch."
            )
        check_checkpoint_folders(value, runs, training_args.max_steps)
        return
    checkpoint = resolve_resume_checkpoint(value, training_args.output_dir)
    owner = checkpoint_run(checkpoint)
    if owner is None:
        raise ValueError(
            f"--resume_from_checkpoint={value!r}: cannot tell which run (url_conditioned or baseline) this checkpoint "
            "belongs to (it is not in a url_conditioned/ or baseline/ folder and carries no run mark); resume from "
            "<output_dir>/url_conditioned/checkpoint-N or <output_dir>/baseline/checkpoint-N, or pass the bare flag."
        )
    if owner not in names:
        raise ValueError(
            f"--resume_from_checkpoint={value!r} is a checkpoint of the baseline run, which --run_baseline false does "
            "not train; drop --run_baseline false or pass a url_conditioned checkpoint."
        )
    others = [last_complete_checkpoint(os.path.join(training_args.output_dir, n)) for n in names if n != owner]
    check_checkpoint_folders(value, runs, training_args.max_steps, checkpoints=[checkpoint, *others])


#: The file of the arguments that shape a run's training data and its evaluation/guidance prompts (written in
#: --output_dir by a fresh run with `write_run_record`, local paths resolved; compared on resume by `_check_run_data`).
RUN_DATA_FILE = "metadata_run_data.json"
#: MetadataArguments that shape the metadata of every training row, evaluation row and prompt (the template as
#: resolved: `--layout meco` without `--template` means url_host since 2026-12-04, url before).
RUN_META_FLAGS = (
    "template", "template_column", "template_format", "layout", "max_metadata_tokens", "metadata_dropout",
    "cooldown_fraction", "document_attention",
)  # fmt: skip
#: MetadataDataArguments that pick the documents, the tokenizer, the rows and the held-out documents of the curve.
RUN_DATA_FLAGS = (
    "dataset", "dataset_name", "dataset_config_name", "train_file", "validation_file", "validation_split_seed",
    "text_column", "block_size", "vocab_size", "tokenizer_name", "max_eval_docs", "synthetic_docs",
)  # fmt: skip


def _run_data(data_args, meta_args, training_args, model_args=None) -> dict:
    """The resolved arguments a resume must keep: the metadata flags, the data flags, --seed (metadata dropout
    draws, the synthetic corpus and its split) and the model flags (those of the pretrain recipe's record: another
    --num_attention_heads of the same width used to load the checkpoint and train on as another model)."""
    from .pretrain import _RECORD_MODEL_FLAGS

    return {
        **({name: getattr(model_args, name) for name in _RECORD_MODEL_FLAGS} if model_args is not None else {}),
        **{name: getattr(meta_args, name) for name in RUN_META_FLAGS},
        **{name: getattr(data_args, name) for name in RUN_DATA_FLAGS},
        "seed": training_args.seed,
    }


def _checkpoint_run_folder(checkpoint: str, output_dir: str) -> str:
    """The folder of the run that saved `checkpoint`, where its `RUN_DATA_FILE` is: the parent of its
    `url_conditioned/` or `baseline/` folder (`<output_dir>/<run>/checkpoint-N`), else the folder that holds it (as
    named or resolved through a link: `checkpoint_run_folder`)."""
    from ._common import checkpoint_run_folder

    def run_of(parent: str) -> str:
        return os.path.dirname(parent) if os.path.basename(parent) in SUB_RUNS else parent

    return checkpoint_run_folder(checkpoint, output_dir, RUN_DATA_FILE, run_of)


def _resumed_run(training_args) -> tuple[str | None, str]:
    """On resume: the checkpoint `--resume_from_checkpoint` names (`None` for `last`: each run's newest in
    --output_dir) and the folder of the run it continues (--output_dir for `last`)."""
    from ..utils.resume import resolve_resume_checkpoint, wants_last

    if wants_last(training_args.resume_from_checkpoint):
        return None, training_args.output_dir
    checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    return checkpoint, _checkpoint_run_folder(checkpoint, training_args.output_dir)


def _check_run_data(data_args, meta_args, training_args, model_args=None) -> None:
    """On resume, before any work: the recorded data- and metadata-shaping arguments of the run the checkpoint
    continues (`RUN_DATA_FILE` in its run folder: --output_dir, or the folder a named checkpoint comes from) must be
    this run's; a difference is refused by flag name (`check_run_record`). A run without the record (started before
    hf_ext wrote it) resumes with a warning. A checkpoint of another folder's run is refused where --output_dir holds
    checkpoints of yet another run (`refuse_checkpoints_of_another_run`)."""
    from ._common import check_run_record, refuse_checkpoints_of_another_run

    checkpoint, folder = _resumed_run(training_args)
    if os.path.isfile(os.path.join(folder, RUN_DATA_FILE)):
        check_run_record(
            folder, RUN_DATA_FILE, _run_data(data_args, meta_args, training_args, model_args), "the data and metadata"
        )
    else:
        note = ""
        if meta_args.layout == "meco" and getattr(meta_args, "template_defaulted", False):
            note = (
                " In particular --layout meco without --template now trains on the url_host template (the URL's host); "
                "runs started before 2026-12-04 used url (the full URL): pass --template url to continue such a run."
            )
        logger.warning(
            "--resume_from_checkpoint: %s has no %s (the interrupted run started before hf_ext recorded it), so "
            "--template, --layout, --max_metadata_tokens and the other metadata and data flags are resumed unchecked; "
            "make sure they are the interrupted run's (the resolved template here: %s).%s",
            folder,
            RUN_DATA_FILE,
            meta_args.template,
            note,
        )
    if checkpoint is not None:
        refuse_checkpoints_of_another_run(
            checkpoint, folder, training_args.output_dir, [os.path.join(training_args.output_dir, n) for n in SUB_RUNS]
        )


def run(model_args, data_args, meta_args, training_args) -> dict:
    """Train the URL-conditioned model (and the baseline), evaluate, generate; results also in `metadata_results.json`.

    Under a multi-process launch training is data-parallel on every rank; evaluation, lm-eval, generation and every
    file are the main process's. Other ranks return `{"process_index": rank, "world_size": n}`.
    """
    import torch
    from transformers import AutoTokenizer, set_seed

    from ..data import build_tokenizer
    from ..metadata import (
        InvalidMetadataError,
        MetadataCollator,
        MetadataEncoder,
        add_context_tokens,
        generate_with_metadata_guidance,
    )
    from ..utils.distributed import barrier, is_main_process, world_size
    from ..utils.io import ensure_writable_dir

    validate_args(model_args, data_args, meta_args, training_args)
    _check_resume(training_args, meta_args.run_baseline)
    if training_args.resume_from_checkpoint:  # the data and metadata of the run it continues
        _check_run_data(data_args, meta_args, training_args, model_args)
    else:  # not into another recipe's finished run
        from ._common import refuse_output_dir_of_another_recipe

        refuse_output_dir_of_another_recipe(training_args.output_dir, RUN_DATA_FILE)
    train, eval_ds, domain_vocab = load_documents(data_args, training_args.seed)
    template = _template(meta_args)
    for split_name, split in (("train", train), ("eval", eval_ds)):
        missing = [c for c in (data_args.text_column, *template.columns) if c not in split.column_names]
        if missing:
            raise ValueError(
                f"the {split_name} data lacks column(s) {missing} (columns: {split.column_names}); pick the template "
                "with --template/--template_column or the text with --text_column."
            )
    _check_template_applies(template, train, meta_args)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
        from ._common import set_missing_pad_token
        from .pretrain import parse_config_overrides

        set_missing_pad_token(
            tokenizer,
            fresh_model=not model_args.model_name_or_path,
            vocab_size=parse_config_overrides(model_args.config_overrides).get("vocab_size"),
        )
    elif data_args.dataset == "synthetic":
        vocab = max(1500, data_args.vocab_size // 2)
        tokenizer = build_tokenizer(vocab, cache=False, texts=list(train[data_args.text_column]) + list(train["url"]))
    else:
        from ._common import warn_embedded_corpus_tokenizer

        warn_embedded_corpus_tokenizer(
            {"--train_file": data_args.train_file, "--dataset_name": data_args.dataset_name}, data_args.vocab_size
        )
        with training_args.main_process_first(desc="build tokenizer"):
            tokenizer = build_tokenizer(data_args.vocab_size)
    if meta_args.layout == "context":
        add_context_tokens(tokenizer)
    # The tokenizer-dependent checks (e.g. the meco separator must fit into --max_metadata_tokens) before any write.
    MetadataEncoder(tokenizer, layout=meta_args.layout, max_metadata_tokens=meta_args.max_metadata_tokens)
    if meta_args.eval_tasks:  # the lm-eval prompts must fit the models' context (was refused only after training)
        check_eval_prompts_fit(model_args, data_args, meta_args, tokenizer, template)
    # the guided-generation example must fit a learned-position model (failed after training with an IndexError)
    check_guidance_fits(model_args, data_args, meta_args, tokenizer, template, eval_ds, domain_vocab)
    # packed documents must not see each other where the flags say so (refused at training start otherwise)
    check_documents_kept_apart(model_args, data_args, meta_args, tokenizer)
    ensure_writable_dir(training_args.output_dir, "--output_dir")
    if is_main_process():  # an older run's results must not sit beside this run's models if this run stops early
        from ._common import clear_previous_results

        clear_previous_results(training_args.output_dir, RESULT_FILES, bool(training_args.resume_from_checkpoint))
        # what a resume of this run must keep (see _check_run_data): a fresh run's record; a named checkpoint of
        # another folder's run makes this folder that run's (its record copied, see `write_run_record`)
        resumed, run_folder = _resumed_run(training_args) if training_args.resume_from_checkpoint else (None, None)
        if not training_args.resume_from_checkpoint or resumed is not None:
            from ._common import write_run_record

            write_run_record(
                training_args.output_dir,
                RUN_DATA_FILE,
                _run_data(data_args, meta_args, training_args, model_args),
                resumed_from=resumed,
                run_folder=run_folder,
                checkpoint_folders=[os.path.join(training_args.output_dir, n) for n in SUB_RUNS],
            )

    eval_docs = [dict(r) for r in eval_ds.select(range(min(len(eval_ds), data_args.max_eval_docs)))]
    main = is_main_process()  # training is data-parallel on every rank; the rest is the main process's
    results: dict = {"curves": {}, "final": {}, "world_size": world_size()}
    # every evaluation scores the same tokens of each held-out document (see `eval_document_tokens`)
    doc_tokens = eval_document_tokens(tokenizer, template, data_args, meta_args, eval_docs)
    results["eval_document_tokens"] = doc_tokens
    shared = (model_args, data_args, meta_args, training_args, tokenizer, train, eval_docs)  # both runs'
    url_model, curve, _, empty_curve = _train_one("url_conditioned", True, *shared, doc_tokens=doc_tokens)
    results["curves"]["with URL context"] = curve
    results["curves"]["URL model, empty context"] = empty_curve
    if meta_args.cooldown_fraction > 0:
        results["cooldown_start_step"] = training_args.max_steps - int(
            round(meta_args.cooldown_fraction * training_args.max_steps)
        )
    common = dict(
        text_column=data_args.text_column,
        max_metadata_tokens=meta_args.max_metadata_tokens,
        max_length=data_args.block_size,
        max_document_tokens=doc_tokens,
        padding_side="right",
    )
    with_ctx = MetadataCollator(tokenizer, template, layout=meta_args.layout, metadata_dropout=0.0, **common)
    without_ctx = MetadataCollator(tokenizer, template, layout=meta_args.layout, metadata_dropout=1.0, **common)
    if main:
        results["final"]["url_model_with_context"] = document_loss(url_model, with_ctx, eval_docs)
        results["final"]["url_model_without_context"] = document_loss(url_model, without_ctx, eval_docs)
    if meta_args.run_baseline:
        base_model, base_curve, _, _ = _train_one("baseline", False, *shared, doc_tokens=doc_tokens)
        results["curves"]["baseline (no metadata)"] = base_curve
        if main:
            plain = MetadataCollator(tokenizer, template, layout="meco", metadata_dropout=1.0, **common)
            results["final"]["baseline"] = document_loss(base_model, plain, eval_docs)
        target = base_curve[-1][1]
        # url_conditioned: scored with its URL (test-time information the baseline never gets);
        # url_conditioned_without_context: scored in the empty context, as a benchmark without URLs sees the model
        # (None where the empty-context curve lacks points, e.g. resumed from a checkpoint written without it)
        empty_complete = [step for step, _ in empty_curve] == [step for step, _ in curve]
        results["steps_to_baseline_final_loss"] = {
            "url_conditioned": steps_to_reach(curve, target),
            "url_conditioned_without_context": steps_to_reach(empty_curve, target) if empty_complete else None,
            "baseline": base_curve[-1][0],
        }

    if not main:  # evaluation, generation and every file are the main process's
        barrier()
        return {"process_index": training_args.process_index, "world_size": results["world_size"]}
    if meta_args.eval_tasks:  # lm-eval with and without the URL at 0 and 5 shots (the paper's comparison)
        models = {"url_conditioned": url_model, **({"baseline": base_model} if meta_args.run_baseline else {})}
        results["task_eval"] = evaluate_tasks_with_and_without_url(models, tokenizer, template, meta_args)

    # Guided generation example
    example = eval_docs[0]
    try:
        metadata = template(example)
    except InvalidMetadataError:  # an unusable value is no metadata, as in training
        metadata = None
    set_seed(training_args.seed)
    url_model.eval()
    gen = dict(
        max_new_tokens=meta_args.guidance_max_new_tokens,
        layout=meta_args.layout,
        max_metadata_tokens=meta_args.max_metadata_tokens,
    )  # the prefix exactly as in training
    results["guidance_example"] = {
        "metadata": metadata,
        "prompt": meta_args.guidance_prompt,
        "scale_1": generate_with_metadata_guidance(
            url_model, tokenizer, [meta_args.guidance_prompt], [metadata], guidance_scale=1.0, do_sample=False, **gen
        )[0],
        f"scale_{meta_args.guidance_scale:g}": generate_with_metadata_guidance(
            url_model,
            tokenizer,
            [meta_args.guidance_prompt],
            [metadata],
            guidance_scale=meta_args.guidance_scale,
            do_sample=False,
            **gen,
        )[0],
    }
    if domain_vocab is not None:  # synthetic corpus: share of host-specific words in sampled continuations
        # Every host is steered towards with the metadata of one of its held-out documents; the mean over hosts is
        # reported next to each host's share (one host alone is a noisy measure).
        per_host: dict[str, dict[str, float]] = {}
        for host, doc in _host_docs(eval_docs, domain_vocab).items():
            for scale in (1.0, meta_args.guidance_scale):
                torch.manual_seed(training_args.seed)
                texts = generate_with_metadata_guidance(
                    url_model,
                    tokenizer,
                    [meta_args.guidance_prompt] * meta_args.guidance_samples,
                    [template(doc)] * meta_args.guidance_samples,
                    guidance_scale=scale,
                    do_sample=True,
                    top_k=0,
                    **gen,
                )
                per_host.setdefault(host, {})[f"scale_{scale:g}"] = _domain_token_share(
                    tokenizer, texts, domain_vocab[host]
                )
        keys = sorted({k for v in per_host.values() for k in v})
        mean = {k: sum(v[k] for v in per_host.values()) / len(per_host) for k in keys}
        results["domain_token_share"] = {"hosts": sorted(per_host), **mean, "per_host": per_host}

    os.makedirs(training_args.output_dir, exist_ok=True)
    tokenizer.save_pretrained(os.path.join(training_args.output_dir, "url_conditioned"))
    atomic_write_results(os.path.join(training_args.output_dir, "metadata_results.json"), results, 2)
    if "task_eval" in results:
        atomic_write_text(os.path.join(training_args.output_dir, "task_eval.md"),
                          format_task_table(results["task_eval"]) + "\n")  # fmt: skip
    _plot(results, os.path.join(training_args.output_dir, "document_loss.png"))  # after the results are on disk
    final = results["final"]
    print("held-out document loss (BOS and context excluded):")
    for key, value in final.items():
        print(f"  {key:28s} {value:.4f}  (ppl {math.exp(min(value, 50)):.2f})")
    if "steps_to_baseline_final_loss" in results:
        print(f"steps to reach the baseline's final loss: {results['steps_to_baseline_final_loss']}")
    print(f"guided generation for {metadata!r}: {json.dumps(results['guidance_example'], ensure_ascii=False)}")
    if "domain_token_share" in results:
        print(f"domain-specific word share: {results['domain_token_share']}")
    if "task_eval" in results:
        print("lm-eval tasks with and without the URL in front of the prompt:")
        print(format_task_table(results["task_eval"]))
    barrier()
    return results


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args

    model_args, data_args, meta_args, training_args = parse_recipe_args(
        (MetadataModelArguments, MetadataDataArguments, MetadataArguments, MetadataTrainingArguments),
        argv,
        resume="keep",
    )
    return finish(run(model_args, data_args, meta_args, training_args))


if __name__ == "__main__":
    main()
