"""HyperINF vs DataInf/LiSSA/TracIn/exact: mislabeled-data detection and data selection on a LoRA-tuned classifier.

The task is built from the embedded corpus: classify a document's domain (networking, filesystem, ...) from its first
tokens, with a share of the training labels flipped to another domain. A tiny Llama is pretrained as a causal LM on
the corpus, turned into `LlamaForSequenceClassification`, and LoRA fine-tuned with `Trainer` on the noisy labels.
Every influence method then ranks the training examples; the recipe prints recall of the flipped examples at each
inspected fraction, ROC-AUC, runtime and peak memory per method, and retrains on the lowest-influence fraction of the
data to compare the clean test loss against a random subset of the same size and the full noisy set.

With `--task llm_selection` the recipe instead LoRA fine-tunes the pretrained tiny Llama as a causal LM on
instruction-style examples made from the corpus (`hf_ext.hyperinf.selection`), a share of whose answers are shuffled;
every method scores the training examples by influence on a clean target set, each method's most helpful top-k% (and
a random subset of the same size) is used to fine-tune the same LoRA initialisation again, and the response-token
loss and token accuracy on held-out clean examples and on the target set are compared (`llm_selection.md`,
`llm_selection.png`, `llm_selection_results.json`).

Run as `python scripts/hyperinf.py` or `hf-ext run hyperinf` (one process; a multi-process launch is refused up front:
the Trainer stages would train data-parallel with a larger global batch. `InfluenceEstimator` itself is data-parallel
under torchrun, see docs/hyperinf.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field

from transformers import TrainingArguments

from ..utils.io import atomic_savefig, atomic_write_results

logger = logging.getLogger(__name__)

DEFAULT_DOMAINS = "devtools,networking"
ALL_METHODS = ("hyperinf", "hyperinf_reference", "datainf", "lissa", "tracin", "exact")


TASKS = ("classification", "llm_selection")


@dataclass
class TaskArguments:
    task: str = field(
        default="classification",
        metadata={
            "help": "classification: mislabeled-data detection and selection on a LoRA classifier; llm_selection: "
            "top-k%% data selection for a LoRA causal LM on instruction data with corrupted answers."
        },
    )
    domains: str | None = field(
        default=None,
        metadata={
            "help": f"Comma-separated corpus domains (at least two); default {DEFAULT_DOMAINS} for classification, "
            "all domains for llm_selection."
        },
    )
    prompt_tokens: int = field(default=24, metadata={"help": "llm_selection: document tokens in each prompt."})
    answer_tokens: int = field(
        default=6, metadata={"help": "llm_selection: tokens of a `repeat` or `continue` response."}
    )
    instruction_kinds: str = field(
        default="topic,repeat",
        metadata={"help": "llm_selection: comma-separated instruction kinds among topic, repeat, continue."},
    )
    max_length: int = field(
        default=48,
        metadata={"help": "classification: tokens per example (documents shorter are skipped)."},
    )
    num_val: int = field(
        default=80,
        metadata={"help": "Clean validation (llm_selection: target) examples that define the influence target."},
    )
    num_test: int = field(default=40, metadata={"help": "Clean test examples for the data-selection eval loss."})
    max_train: int = field(default=320, metadata={"help": "At most this many training examples."})
    noise_rate: float = field(
        default=0.2,
        metadata={
            "help": "Share of training labels flipped to another domain (llm_selection: answers swapped with another "
            "training example's)."
        },
    )
    vocab_size: int = field(default=512, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained base (folder or hub id) loaded with AutoModelForSequenceClassification "
            "(llm_selection: AutoModelForCausalLM); default: a tiny Llama pretrained here on the corpus. Its "
            "tokenizer is used when the folder has one."
        },
    )
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny Llama."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the tiny Llama."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the tiny Llama."})
    pretrain_steps: int = field(
        default=600, metadata={"help": "Causal-LM pretraining steps of the base model on the corpus (0: random base)."}
    )
    pretrain_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the pretraining."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the reference uses 2r with rsLoRA)."})
    use_rslora: bool = field(default=True, metadata={"help": "rsLoRA scaling alpha/sqrt(r), as in the reference."})
    target_modules: str = field(default="q_proj,v_proj", metadata={"help": "Comma-separated LoRA target modules."})


@dataclass
class InfluenceArguments:
    methods: str = field(
        default=",".join(ALL_METHODS),
        metadata={
            "help": "Comma-separated methods among hyperinf, hyperinf_reference (the reference's X_0 = 5e-5 I, 30 "
            "fixed iterations, extra damping 1e-3), datainf, lissa, tracin, exact."
        },
    )
    influence_batch_size: int = field(default=16, metadata={"help": "Examples per vmapped per-example-gradient call."})
    damping_scale: float = field(default=0.1, metadata={"help": "Per-layer damping = scale * mean squared gradient."})
    schulz_iterations: int = field(default=100, metadata={"help": "Maximum Schulz iterations for hyperinf."})
    schulz_init: str = field(
        default="frobenius",
        metadata={"help": "Schulz init: frobenius (I/||A||_F, the default), transpose or identity (the reference)."},
    )
    lissa_iterations: int = field(default=10, metadata={"help": "LiSSA recursion depth (passes over the train set)."})
    inspect_fraction: float = field(default=0.2, metadata={"help": "Inspected share for the headline recall."})
    select_fraction: float = field(
        default=0.8,
        metadata={"help": "classification: data selection keeps this lowest-influence share of the training set."},
    )
    select_fractions: str = field(
        default="0.2,0.5",
        metadata={"help": "llm_selection: comma-separated distinct shares of the training set to keep (most helpful first)."},
    )
    select_per_class: bool = field(
        default=True,
        metadata={
            "help": "Data selection keeps the lowest-influence share within each training label (llm_selection: "
            "within each instruction kind and document domain), so the balance is unchanged (a random subset is "
            "drawn the same way)."
        },
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})


@dataclass
class HyperInfTrainingArguments(TrainingArguments):
    output_dir: str = field(default="outputs/hyperinf", metadata={"help": "Where results, curves and models go."})
    num_train_epochs: float = field(default=4.0, metadata={"help": "LoRA fine-tuning epochs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Examples per device per step."})
    per_device_eval_batch_size: int = field(
        default=64,
        metadata={"help": "Examples per forward pass of the recipe's evaluations (losses and accuracies)."},
    )
    learning_rate: float = field(default=5e-3, metadata={"help": "LoRA fine-tuning learning rate."})
    warmup_steps: float = field(default=0.06, metadata={"help": "Warmup (the reference: 6% linear warmup)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=50, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy during training."})
    eval_strategy: str = field(
        default="no", metadata={"help": "Must stay no: the recipe evaluates after fine-tuning (val/test splits)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the split, the label noise, the model and training."})


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def validate_args(task: TaskArguments, model_args: ModelArguments, inf: InfluenceArguments, training_args) -> None:
    """Check arguments before any data is loaded or anything is written."""
    from ..data import corpus_domains, hub_offline
    from ..utils import ensure_writable_dir

    if task.task not in TASKS:
        raise ValueError(f"--task must be one of {list(TASKS)}, got {task.task!r}.")
    known = set(corpus_domains())
    if task.domains is None:
        task.domains = DEFAULT_DOMAINS if task.task == "classification" else ",".join(sorted(known))
    domains = parse_list(task.domains)
    if len(domains) < 2 or len(set(domains)) != len(domains):
        raise ValueError(f"--domains needs at least two distinct domains, got {task.domains!r}.")
    unknown = sorted(set(domains) - known)
    if unknown:
        raise ValueError(f"--domains: unknown domain(s) {unknown}; choose among {sorted(known)}.")
    if not 0.0 < task.noise_rate < 1.0:
        raise ValueError(f"--noise_rate must be in (0, 1), got {task.noise_rate}.")
    for name in ("max_length", "num_val", "num_test", "max_train", "vocab_size"):
        if getattr(task, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(task, name)}.")
    if task.max_length < 4:
        raise ValueError(f"--max_length must be at least 4 tokens, got {task.max_length}.")
    if task.prompt_tokens < 1 or task.answer_tokens < 1:
        raise ValueError(
            f"--prompt_tokens and --answer_tokens must be positive, got {task.prompt_tokens}, {task.answer_tokens}."
        )
    kinds = parse_list(task.instruction_kinds)
    if not kinds or any(k not in ("topic", "repeat", "continue") for k in kinds):
        raise ValueError(
            f"--instruction_kinds must be comma-separated among topic, repeat, continue; got {task.instruction_kinds!r}."
        )
    if task.task == "llm_selection":
        fractions = parse_fractions(inf.select_fractions)
        if not fractions or any(not 0.0 < f < 1.0 for f in fractions):
            raise ValueError(
                f"--select_fractions must be comma-separated shares in (0, 1), e.g. 0.2,0.5; got "
                f"{inf.select_fractions!r}."
            )
        repeated = sorted({f for f in fractions if fractions.count(f) > 1})
        if repeated:  # each share would be fine-tuned and reported twice (the same runs, the same table rows)
            raise ValueError(
                f"--select_fractions lists {', '.join(f'{f:g}' for f in repeated)} more than once "
                f"({inf.select_fractions!r}); list each share once."
            )
    _refuse_inapplicable_flags(task, model_args, inf)
    if model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    if model_args.lora_r <= 0 or model_args.pretrain_steps < 0:
        raise ValueError("--lora_r must be positive and --pretrain_steps non-negative.")
    if not parse_list(model_args.target_modules):
        raise ValueError("--target_modules must name at least one module, e.g. q_proj,v_proj.")
    for name, example in (("lora_alpha", "16"), ("pretrain_learning_rate", "0.003")):
        value = getattr(model_args, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"--{name} must be a positive finite number (e.g. the default {example}), got {value}"
                + (": the LoRA scaling is alpha/r (alpha/sqrt(r) with --use_rslora)." if name == "lora_alpha" else ".")
            )
    methods = parse_list(inf.methods)
    bad = sorted(set(methods) - set(ALL_METHODS))
    if not methods or bad:
        raise ValueError(f"--methods: unknown {bad or methods}; choose among {list(ALL_METHODS)}.")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ValueError(f"--methods names {repeated} more than once; list each method once.")
    if not 0.0 < inf.inspect_fraction <= 1.0 or not 0.0 < inf.select_fraction <= 1.0:
        raise ValueError("--inspect_fraction and --select_fraction must be in (0, 1].")
    if inf.schulz_init not in ("transpose", "identity", "frobenius"):
        raise ValueError(f"--schulz_init must be transpose, identity or frobenius, got {inf.schulz_init!r}.")
    if inf.influence_batch_size <= 0 or inf.lissa_iterations <= 0:
        raise ValueError(
            f"--influence_batch_size and --lissa_iterations must be positive, got {inf.influence_batch_size} and "
            f"{inf.lissa_iterations}."
        )
    if inf.schulz_iterations < 0:
        raise ValueError(f"--schulz_iterations must be >= 0 (e.g. the default 100), got {inf.schulz_iterations}.")
    _refuse_unread_method_flags(inf, methods)
    if not (inf.damping_scale > 0 and math.isfinite(inf.damping_scale)):
        raise ValueError(
            f"--damping_scale must be a positive finite number (e.g. the default 0.1): hyperinf, datainf, lissa and "
            f"exact invert the damped curvature; got {inf.damping_scale}."
        )
    if inf.num_threads is not None and inf.num_threads <= 0:
        raise ValueError(f"--num_threads must be positive, got {inf.num_threads}.")
    base = model_args.model_name_or_path
    if base and not os.path.isdir(base) and hub_offline():
        raise ValueError(
            f"--model_name_or_path={base!r} is not a local folder and HF_HUB_OFFLINE is set; pass a local checkpoint "
            "or drop the argument to pretrain a tiny base model on the embedded corpus."
        )
    if task.task == "classification" and base and os.path.isfile(os.path.join(base, "config.json")):
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        try:
            config = AutoConfig.from_pretrained(base)
        except (ValueError, OSError):  # not a config transformers can read: loading the base reports it
            config = None
        if config is not None and type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
            raise ValueError(
                f"--model_name_or_path={base!r} is a {config.model_type!r} model, which has no sequence-classification "
                "class (AutoModelForSequenceClassification) for --task classification; use --task llm_selection "
                "with it, or a base of a type that has one (e.g. llama)."
            )
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if strategy != "no":
        raise ValueError(
            f"--eval_strategy {strategy} needs an eval_dataset, which the recipe's Trainer runs do not have (the "
            "recipe evaluates after fine-tuning); drop the flag."
        )
    resume = resolve_resume(training_args)  # before the folder is created: a refused resume writes nothing
    if resume and not base and not os.path.isfile(os.path.join(training_args.output_dir, "base", "config.json")):
        raise ValueError(
            f"--resume_from_checkpoint: --output_dir={training_args.output_dir!r} has no pretrained base model "
            "(base/config.json) from the interrupted run; resume with the same --output_dir, pass the base with "
            "--model_name_or_path, or drop the flag to start from scratch."
        )
    saved_base = os.path.join(training_args.output_dir, "base")
    if resume and not base and os.path.isfile(os.path.join(saved_base, "config.json")):
        with open(os.path.join(saved_base, "config.json")) as fh:
            saved_vocab = json.load(fh).get("vocab_size")
        if saved_vocab is not None and saved_vocab != task.vocab_size:
            raise ValueError(
                f"--vocab_size {task.vocab_size}: the base model of the interrupted run ({saved_base}) was pretrained "
                f"with a {saved_vocab}-token tokenizer, which the resumed run keeps; resume with --vocab_size "
                f"{saved_vocab}, or start afresh in another --output_dir."
            )
    if resume:
        _check_run_data(task, model_args, training_args)
    from ._common import check_vocab_size

    # as `run_tokenizer` decides: a base folder holding a tokenizer is tokenized with it, else the BPE of --vocab_size
    # is built (which refused a too small size only after the earlier run's results had been removed)
    check_vocab_size(task.vocab_size, _tokenizer_folder(base, training_args))
    _check_target_modules(task, model_args, training_args)
    ensure_writable_dir(training_args.output_dir, "--output_dir")


def _check_target_modules(task: TaskArguments, model_args: ModelArguments, training_args) -> None:
    """Refuse, before any work, a --target_modules that selects no module LoRA can adapt, a module it cannot adapt, or
    names a module the base does not have: the adapter is built on the base model's skeleton on the meta device (no
    weights, no memory) with the run's `LoraConfig`. A typo used to fail in peft only after the earlier run's results
    had been removed and the base pretrained again (or, beside a valid name, to be ignored). The check is skipped
    where the base's config cannot be read here (the run's own loading then reports it)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    base = model_args.model_name_or_path
    if base is None and training_args.resume_from_checkpoint:
        base = os.path.join(training_args.output_dir, "base")  # the interrupted run's, reused
    try:
        config = _tiny_llama_config(model_args, task.vocab_size) if base is None else AutoConfig.from_pretrained(base)
    except (ValueError, OSError):
        return
    classification = task.task == "classification"
    auto = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
    # the run's own build of the model warns (e.g. peft's fan_in_fan_out note) where needed: not twice
    with torch.device("meta"), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            skeleton = auto.from_config(config)
        except (ValueError, TypeError, RuntimeError, NotImplementedError):
            return
        layers = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
        names = dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules() if isinstance(m, layers))
        if classification:  # peft trains the classification head in full (modules_to_save), never with LoRA
            names = {n: None for n in names if n not in ("classifier", "score")}
        value, which = model_args.target_modules, "the tiny Llama pretrained here" if base is None else repr(base)
        if model_args.model_name_or_path is None and base is not None:
            which = f"the tiny Llama of the interrupted run, {base!r}"
        try:
            adapted = get_peft_model(skeleton, _lora_config(model_args, "SEQ_CLS" if classification else "CAUSAL_LM"))
        except ValueError as err:
            text = " ".join(str(err).split())
            unsupported = re.match(r"Target module (\w+)\(", text)  # peft prints the whole module after it
            if unsupported:
                problem = f"selects a {unsupported[1]} module of the base model ({which}), which LoRA cannot adapt"
            else:
                problem = f"selects no module LoRA can adapt in the base model ({which}; peft: {text[:200]})"
        except (TypeError, RuntimeError, NotImplementedError):
            return
        else:
            targeted = getattr(adapted.base_model, "targeted_module_names", None) or []
            unmatched = [t for t in parse_list(value) if not any(k == t or k.endswith("." + t) for k in targeted)]
            if not targeted or not unmatched:
                return
            problem = f"names {', '.join(unmatched)}, which match{'es' if len(unmatched) == 1 else ''} no module of "
            problem += f"the base model ({which}) LoRA adapts"
    raise ValueError(
        f"--target_modules {value!r} {problem}. Its linear and embedding layers are named "
        f"{', '.join(list(names)[:12])}; pass comma-separated names among them, e.g. {_example_targets(names)}."
    )


#: Attention query / value projections of common architectures, in pairs (the LoRA paper's choice), for the example
#: of the message above: Llama-likes, BERT-likes, DistilBERT, GPT-2 (its fused c_attn alone).
_EXAMPLE_TARGETS = (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("c_attn",))


def _example_targets(names) -> str:
    """An example --target_modules among `names` (the base's layer names): its query/value projections where it has
    them (q_proj,v_proj was suggested to a BERT base, which has none), else its first two names."""
    for pair in _EXAMPLE_TARGETS:
        if all(n in names for n in pair):
            return ",".join(pair)
    return ",".join(list(names)[:2])


#: The file of the arguments that define a run: its data and label noise / corruption (--seed and every
#: `TaskArguments` flag) and its model (every `ModelArguments` flag: the base, the tiny base's size and pretraining, the
#: LoRA adapter). A resumed fine-tuning must see the data, and continue the model, of the run it continues.
RUN_DATA_FILE = "hyperinf_run_data.json"


def _model_record(model_args: ModelArguments) -> dict:
    """The model-defining arguments as recorded (`--target_modules` as the sorted set of names: peft reads a set)."""
    return {**asdict(model_args), "target_modules": ",".join(sorted(set(parse_list(model_args.target_modules))))}


def _run_data(task: TaskArguments, model_args: ModelArguments, training_args) -> dict:
    return {"seed": training_args.seed, **asdict(task), **_model_record(model_args)}


def _check_run_data(task: TaskArguments, model_args: ModelArguments, training_args) -> None:
    """On resume: the interrupted run's data- and model-defining arguments (written by its start) must be this run's.

    A record written before hf_ext recorded the model arguments (or no record at all) is resumed with a warning: what
    it lacks cannot be checked."""
    path = os.path.join(training_args.output_dir, RUN_DATA_FILE)
    if not os.path.isfile(path):  # a run started before this file existed: nothing to compare with
        logger.warning(
            "--resume_from_checkpoint: %s has no %s (the interrupted run started before hf_ext recorded it), so "
            "--seed, the task flags and the model flags are resumed unchecked; make sure they are the interrupted "
            "run's.",
            training_args.output_dir,
            RUN_DATA_FILE,
        )
        return
    with open(path, encoding="utf-8") as fh:
        saved = json.load(fh)
    model = _model_record(model_args)
    unrecorded = [k for k in model if k not in saved]
    if unrecorded:
        logger.warning(
            "--resume_from_checkpoint: %s records no %s (written before hf_ext recorded the model flags), so they are "
            "resumed unchecked; make sure they are the interrupted run's (another LoRA scaling or adapter would "
            "continue a different model).",
            path,
            ", ".join("--" + k for k in unrecorded),
        )
    now = _run_data(task, model_args, training_args)
    # --max_length does not shape the llm_selection data (refused there now, see `_refuse_inapplicable_flags`); a run
    # that recorded another value, which it ignored, is resumed without it
    unread = {"max_length"} if task.task == "llm_selection" else set()
    changed = {
        k: f"--{k} {now[k]!r} (the interrupted run used {saved[k]!r})"
        for k in now
        if k in saved and saved[k] != now[k] and k not in unread
    }
    data = [text for k, text in changed.items() if k not in model]
    models = [text for k, text in changed.items() if k in model]
    reasons = []
    if data:
        reasons.append(
            "on other data: " + "; ".join(data) + " (its checkpoints were trained on the data, split, label noise and "
            "corruption, those arguments define)"
        )
    if models:
        reasons.append(
            "with another model: " + "; ".join(models) + " (its checkpoints hold the LoRA adapter of the base model "
            "and adapter those arguments build; the rest of the fine-tuning would train another model, e.g. at "
            "another LoRA scaling, and report it as this run)"
        )
    if reasons:
        raise ValueError(
            "--resume_from_checkpoint continues a run " + ", and ".join(reasons) + ". Resume with the interrupted "
            "run's values, or start afresh in another --output_dir."
        )


def _refuse_inapplicable_flags(task: TaskArguments, model_args: ModelArguments, inf: InfluenceArguments) -> None:
    """A flag the chosen run would ignore is an error naming it (the user believes it did something)."""
    from ._common import changed_from_default

    if task.task == "classification":
        ignored = changed_from_default(task, ("prompt_tokens", "answer_tokens", "instruction_kinds"))
        ignored += changed_from_default(inf, ("select_fractions",))
        if ignored:
            raise ValueError(
                f"{', '.join('--' + n for n in ignored)} only apply to --task llm_selection; drop them or pass "
                "--task llm_selection (classification keeps --select_fraction)."
            )
    else:
        if changed_from_default(inf, ("select_fraction",)):
            raise ValueError(
                "--select_fraction only applies to --task classification; --task llm_selection keeps the shares in "
                "--select_fractions (e.g. 0.2,0.5)."
            )
        if changed_from_default(task, ("max_length",)):  # was ignored: the instruction data never read it
            raise ValueError(
                "--max_length only applies to --task classification; the examples of --task llm_selection are sized "
                "by --prompt_tokens (document tokens in each prompt) and --answer_tokens."
            )
    if model_args.model_name_or_path:
        ignored = changed_from_default(
            model_args,
            ("hidden_size", "num_hidden_layers", "num_attention_heads", "pretrain_steps", "pretrain_learning_rate"),
        )
        if ignored:
            raise ValueError(
                f"{', '.join('--' + n for n in ignored)} describe the tiny base model pretrained here and are not "
                "used with --model_name_or_path; drop them or drop --model_name_or_path."
            )
        # as `load_tokenizer` decides: a base folder that holds a tokenizer is tokenized with it
        base = model_args.model_name_or_path
        if os.path.exists(os.path.join(base, "tokenizer_config.json")) and changed_from_default(task, ("vocab_size",)):
            raise ValueError(
                f"--vocab_size sizes the tokenizer built on the fly, but the tokenizer of --model_name_or_path={base!r} "
                "is loaded, so it would be ignored; drop --vocab_size (it applies to a base folder without a "
                "tokenizer)."
            )


def parse_fractions(text: str) -> list[float]:
    try:
        return [float(item) for item in parse_list(text)]
    except ValueError:
        return []


def resolve_resume(training_args) -> str | None:
    """`--resume_from_checkpoint` as a checkpoint folder of the LoRA fine-tuning run (`None`: fresh run).

    The fine-tuning run writes its `checkpoint-N` folders directly into `--output_dir`, so a bare flag (or `last`)
    picks the newest complete one there, as in transformers' example scripts. A fresh run refuses an `--output_dir`
    that already holds complete checkpoints, and a resume a checkpoint saved beyond `--max_steps`.
    """
    from ..utils import resolve_resume_checkpoint
    from ..utils.resume import check_checkpoint_folders

    value = training_args.resume_from_checkpoint
    path = resolve_resume_checkpoint(value, training_args.output_dir)
    # a fresh run into a folder holding an earlier run's checkpoints, or a checkpoint beyond --max_steps: refused (one
    # at --max_steps is of this run, finished: it is restored, see `train_or_restore_finished`)
    check_checkpoint_folders(path, [training_args.output_dir], training_args.max_steps)
    training_args.resume_from_checkpoint = path
    return path


def _tokenizer_folder(base: str | None, training_args) -> str | None:
    """The folder whose tokenizer `run_tokenizer` loads (`None`: the embedded BPE of `--vocab_size` is built)."""
    if base is None and training_args.resume_from_checkpoint:
        base = os.path.join(training_args.output_dir, "base")
    if base and os.path.exists(os.path.join(base, "tokenizer_config.json")):
        return base
    return None


def load_tokenizer(base: str | None, vocab_size: int):
    """The base model's tokenizer when `base` is a folder that has one, else the embedded BPE of `vocab_size`."""
    if base and os.path.exists(os.path.join(base, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
        if tokenizer.pad_token is None:  # BERT-family tokenizers have a pad token (and no eos token)
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.sep_token
        return tokenizer
    from ..data import build_tokenizer

    return build_tokenizer(vocab_size)


def run_tokenizer(base: str | None, vocab_size: int, training_args):
    """The tokenizer of this run: the given base's; when resuming without one, that of the base the interrupted run
    pretrained (`<output_dir>/base`, the token ids its checkpoints were trained on); else the embedded BPE."""
    if base is None and training_args.resume_from_checkpoint:
        base = os.path.join(training_args.output_dir, "base")
    return load_tokenizer(base, vocab_size)


def prepare_base(model_args, tokenizer, training_args) -> str:
    """Pretrain the tiny base model into `<output_dir>/base` (reused as is when resuming); returns the folder."""
    base_dir = os.path.join(training_args.output_dir, "base")
    if training_args.resume_from_checkpoint:
        print(f"resuming: reusing the pretrained base in {base_dir}")
    else:
        pretrain_base(model_args, tokenizer, training_args, base_dir)
    return base_dir


def noisy_count(noise_rate: float, num_train: int, max_train: int, what: str = "flipped labels") -> int:
    """`round(noise_rate * num_train)`, refused with a `ValueError` naming --noise_rate and --max_train when it is 0 or
    all of them: the recipe measures how well each method finds the noisy examples and evaluates the model on the clean
    and on the noisy ones, which needs both (it used to fail with ZeroDivisionError after all the training)."""
    count = int(round(noise_rate * num_train))
    if not 0 < count < num_train:
        raise ValueError(
            f"--noise_rate {noise_rate} of the {num_train} training examples (--max_train {max_train}, or fewer when "
            f"the corpus yields fewer) rounds to {count} {what}: the recipe needs at least one noisy and one clean "
            f"example; pass a --noise_rate strictly between {0.5 / num_train:.3g} and {1 - 0.5 / num_train:.3g} or raise "
            "--max_train."
        )
    return count


def build_task(task: TaskArguments, tokenizer, seed: int):
    """Tokenized train (noisy labels), validation and test splits of the domain-classification task.

    Returns `(train, val, test, is_noisy, domains)`; `train` carries the (possibly flipped) `labels` and the true
    label in `clean_label`.
    """
    import numpy as np
    from datasets import Dataset, concatenate_datasets

    from ..data import load_corpus
    from ..hyperinf.selection import end_token_id

    # the tokenizer's eos token ends every example; a BERT-family tokenizer (no eos token) frames it as
    # [CLS] ... [SEP] (the token its classifier pools first); neither an eos nor a sep token is refused here, before
    # start_run_files (every example ended in None and the Trainer's collator failed after the earlier results were gone)
    end = end_token_id(tokenizer)
    start = [tokenizer.cls_token_id] if tokenizer.eos_token_id is None and tokenizer.cls_token_id is not None else []
    body = task.max_length - len(start) - 1
    domains = parse_list(task.domains)
    corpus = concatenate_datasets([load_corpus("train", domains=domains), load_corpus("test", domains=domains)])
    encoded = tokenizer(list(corpus["text"]), add_special_tokens=False)["input_ids"]
    rows = [
        {"input_ids": start + ids[:body] + [end], "labels": domains.index(domain)}
        for ids, domain in zip(encoded, corpus["domain"])
        if len(ids) >= body
    ]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    val, test, train = (
        rows[: task.num_val],
        rows[task.num_val : task.num_val + task.num_test],
        rows[task.num_val + task.num_test :][: task.max_train],
    )
    if len(train) < 20:
        raise ValueError(
            f"Only {len(train)} training examples remain, the recipe needs at least 20: {len(rows)} documents of "
            f"--domains have at least --max_length {task.max_length} tokens, --num_val {task.num_val} and --num_test "
            f"{task.num_test} of them are held out, and --max_train is {task.max_train}. Lower --num_val, --num_test "
            "or --max_length, raise --max_train, or add --domains."
        )
    num_noisy = noisy_count(task.noise_rate, len(train), task.max_train)
    noisy = rng.choice(len(train), size=num_noisy, replace=False)
    is_noisy = np.zeros(len(train), dtype=bool)
    is_noisy[noisy] = True
    for row, example in enumerate(train):
        example["clean_label"] = example["labels"]
        if is_noisy[row]:
            example["labels"] = int((example["labels"] + rng.integers(1, len(domains))) % len(domains))
    return Dataset.from_list(train), Dataset.from_list(val), Dataset.from_list(test), is_noisy, domains


def _tiny_llama_config(model_args: ModelArguments, vocab_size: int, tokenizer=None):
    """The config of the tiny Llama the recipe pretrains (`tokenizer`: its special-token ids, if given)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        intermediate_size=2 * model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_attention_heads,
        max_position_embeddings=256,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        tie_word_embeddings=True,
    )


def pretrain_base(model_args: ModelArguments, tokenizer, training_args, out_dir: str):
    """A tiny Llama from config, pretrained as a causal LM on the corpus, saved to `out_dir`."""
    from transformers import LlamaForCausalLM, Trainer, default_data_collator

    from ..data import load_corpus, pack_dataset

    config = _tiny_llama_config(model_args, len(tokenizer), tokenizer)
    model = LlamaForCausalLM(config)
    if model_args.pretrain_steps > 0:
        blocks = pack_dataset(load_corpus("train"), tokenizer, 64, "text")
        args = TrainingArguments(
            output_dir=os.path.join(out_dir, "trainer"),
            max_steps=model_args.pretrain_steps,
            per_device_train_batch_size=32,
            learning_rate=model_args.pretrain_learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.1,
            logging_steps=100,
            save_strategy="no",
            report_to="none",
            seed=training_args.seed,
            use_cpu=training_args.use_cpu,
            disable_tqdm=training_args.disable_tqdm,
        )
        Trainer(model=model, args=args, train_dataset=blocks, data_collator=default_data_collator).train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def lora_classifier(base_dir: str, num_labels: int, model_args: ModelArguments, seed: int, pad_token_id: int):
    """A sequence classifier from the pretrained base, wrapped with a fresh LoRA adapter (fixed seed)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return get_peft_model(model, _lora_config(model_args, "SEQ_CLS"))


def _check_token_ids_fit(rows: int, base: str, splits, task: TaskArguments, training_args) -> None:
    """Refuse, before the earlier run's files are touched, token ids beyond the `rows` of the given base's input
    embedding: a base folder without a tokenizer gets the embedded BPE of --vocab_size, whose ids a smaller base cannot
    embed, and a tokenizer saved beside a smaller embedding does the same (the fine-tuning used to fail with a bare
    IndexError after the earlier results had been removed). The fix named is one that can work: --vocab_size only
    where `rows` reaches the smallest size the embedded tokenizer accepts."""
    from ..data.tokenizer import SPECIAL_TOKENS

    largest = max(max((max(ids) for ids in split["input_ids"] if len(ids)), default=-1) for split in splits)
    if largest < rows:
        return
    problem = f"The task's token ids reach {largest}, but the base model {base!r} embeds {rows} tokens"
    if _tokenizer_folder(base, training_args) is not None:
        raise ValueError(
            f"{problem}: the tokenizer saved in that folder has more tokens than the model's embedding. Save the "
            "tokenizer the model was trained with in the folder, or resize the model's embedding to the tokenizer "
            "(model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained)."
        )
    problem += (
        f": the base folder has no tokenizer, so the embedded tokenizer of --vocab_size {task.vocab_size} was used"
    )
    smallest = 256 + len(SPECIAL_TOKENS)
    if rows >= smallest:
        raise ValueError(
            f"{problem}. Save the base's tokenizer in the folder (tokenizer.save_pretrained({base!r})), or pass "
            f"--vocab_size {rows} or less."
        )
    raise ValueError(
        f"{problem}. No --vocab_size fits: the embedded tokenizer has at least {smallest} tokens (the byte alphabet "
        f"plus special tokens) and the base embeds {rows}. Save the tokenizer the base was trained with in the folder "
        f"(tokenizer.save_pretrained({base!r})), or use a base that embeds at least {smallest} tokens."
    )


def _causal_lm_embedding_rows(base: str) -> int | None:
    """The input-embedding rows of the causal LM `base` (`--task llm_selection`), from its skeleton on the meta device
    (no weights); `None` where its config cannot be built here (the run's own loading then reports it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base)
        with torch.device("meta"), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = AutoModelForCausalLM.from_config(config)
    except (ValueError, OSError, TypeError, RuntimeError, NotImplementedError):
        return None
    embedding = skeleton.get_input_embeddings()
    return None if embedding is None else embedding.weight.shape[0]


def _lora_config(model_args: ModelArguments, task_type: str):
    """The LoRA adapter of the recipe's runs (`task_type`: peft's `SEQ_CLS` or `CAUSAL_LM`)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType[task_type],
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        use_rslora=model_args.use_rslora,
        lora_dropout=0.0,
        target_modules=parse_list(model_args.target_modules),
    )


def fine_tune(
    model, train, training_args, run_name: str, resume_from_checkpoint: str | None = None, data_collator=None
):
    """LoRA fine-tuning with `Trainer`; returns the trained model.

    The main run (`run_name="full"`) writes its checkpoints (with `--save_strategy`) into `--output_dir` and resumes
    from `resume_from_checkpoint`; the data-selection retrainings write theirs under `runs/<name>` and always start
    from scratch.
    """
    from dataclasses import replace

    from transformers import Trainer

    from ..utils.resume import with_loss_window

    out = training_args.output_dir if run_name == "full" else os.path.join(training_args.output_dir, "runs", run_name)
    args = replace(training_args, output_dir=out, report_to="none", resume_from_checkpoint=None)
    trainer = with_loss_window(Trainer)(  # a resumed run logs the uninterrupted run's losses
        model=model,
        args=args,
        train_dataset=train.select_columns(["input_ids", "labels"]),
        data_collator=data_collator,
    )
    from ..utils.resume import train_or_restore_finished

    # a checkpoint at --max_steps (a run stopped after its last checkpoint) is restored, not trained a step past
    train_or_restore_finished(trainer, resume_from_checkpoint if run_name == "full" else None)
    return model


def evaluate(model, dataset, batch_size: int = 64) -> dict:
    """Mean cross-entropy and accuracy of a classifier on `dataset` (clean labels)."""
    import torch

    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            ids = torch.tensor(rows["input_ids"], device=model.device)
            labels = torch.tensor(rows["labels"], device=model.device)
            logits = model(input_ids=ids).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
    return {"loss": total / len(dataset), "accuracy": correct / len(dataset)}


#: The influence-method flags and the --methods that read them (see `estimator_options`; hyperinf_reference fixes
#: its own Schulz settings, tracin inverts no curvature, so it has no damping).
_METHOD_FLAG_READERS = {
    "schulz_iterations": ("hyperinf",),
    "schulz_init": ("hyperinf",),
    "lissa_iterations": ("lissa",),
    "damping_scale": ("hyperinf", "hyperinf_reference", "datainf", "lissa", "exact"),
}


def schulz_summary(layer_info: dict[str, dict]) -> dict:
    """The most Schulz iterations and the largest final residual over the layers HyperINF inverted (a layer `fit` left
    out, `{"skipped": True}`: its gradient is zero for every training example, has neither)."""
    inverted = [info for info in layer_info.values() if not info.get("skipped")]
    return {
        "schulz_max_iterations_used": max(info["schulz_iterations"] for info in inverted),
        "schulz_max_residual": max(info["schulz_residual"] for info in inverted),
    }


def _refuse_unread_method_flags(inf: InfluenceArguments, methods: list[str]) -> None:
    """A method flag that none of the selected --methods reads, set away from its default, is an error naming it."""
    from ._common import changed_from_default

    unread = [
        f"--{name} (read only by {', '.join(_METHOD_FLAG_READERS[name])})"
        for name in changed_from_default(inf, _METHOD_FLAG_READERS)
        if not set(_METHOD_FLAG_READERS[name]) & set(methods)
    ]
    if unread:
        raise ValueError(
            f"--methods {','.join(methods)} would ignore {'; '.join(unread)}: drop "
            f"{'it' if len(unread) == 1 else 'them'} or add a method that reads {'it' if len(unread) == 1 else 'them'}."
        )


def estimator_options(method: str, inf: InfluenceArguments) -> tuple[str, dict]:
    """Map a recipe method name to `InfluenceEstimator` arguments."""
    common = {"batch_size": inf.influence_batch_size, "damping_scale": inf.damping_scale}
    if method == "hyperinf":
        return "hyperinf", {**common, "schulz_iterations": inf.schulz_iterations, "schulz_init": inf.schulz_init}
    if method == "hyperinf_reference":
        reference = {"schulz_init": "identity", "schulz_iterations": 30, "schulz_tol": None}
        return "hyperinf", {**common, **reference, "schulz_extra_damping": 1e-3}
    if method == "lissa":
        return "lissa", {**common, "lissa_iterations": inf.lissa_iterations}
    return method, common


def plot_results(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, res in results["methods"].items():
        ax.plot(res["curve_fractions"], res["curve_recall"], label=method)
    ax.plot([0, 1], [0, 1], "k:", label="random")
    ax.set_xlabel("share of training data inspected (highest influence first)")
    ax.set_ylabel("share of flipped labels found")
    ax.set_title("Mislabeled-data detection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "detection_curves.png"))
    atomic_savefig(fig, paths[-1], dpi=120)
    plt.close(fig)
    selection = results.get("selection", {})
    if selection:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(selection)
        ax.bar(names, [selection[n]["loss"] for n in names], color="tab:blue")
        ax.set_ylabel("clean test loss")
        ax.set_title(f"Data selection: keep {results['config']['select_fraction']:.0%} of the training set")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "selection_loss.png"))
        atomic_savefig(fig, paths[-1], dpi=120)
        plt.close(fig)
    return paths


# The report files a run writes into --output_dir (a fresh run removes an earlier run's before it starts).
RESULT_FILES = (
    "hyperinf_results.json", "hyperinf_scores.json", "detection_curves.png", "selection_loss.png",
    "llm_selection_results.json", "llm_selection_scores.json", "llm_selection.md", "llm_selection.png",
)  # fmt: skip


def start_run_files(task: TaskArguments, model_args: ModelArguments, training_args) -> None:
    """Once the tokenizer and the data are built (where a too small --vocab_size, or a --max_length / --num_val /
    --max_train that leaves too few examples, is refused): remove an earlier run's report files and record this run's
    data- and model-defining arguments. A run refused for a bad value leaves both as the earlier run left them."""
    from ._common import clear_previous_results

    clear_previous_results(training_args.output_dir, RESULT_FILES, bool(training_args.resume_from_checkpoint))
    if not training_args.resume_from_checkpoint:  # what a resume of this run must keep (see _check_run_data)
        from ..utils.io import atomic_write_json

        record = _run_data(task, model_args, training_args)
        atomic_write_json(os.path.join(training_args.output_dir, RUN_DATA_FILE), record)


def run(task: TaskArguments, model_args: ModelArguments, inf: InfluenceArguments, training_args) -> dict:
    """Fine-tune, score with every method, evaluate detection and data selection. Returns the results dict."""
    import numpy as np
    import torch
    from transformers import set_seed

    from ..hyperinf import InfluenceEstimator, PeakMemory, detection_curve, recall_at_fraction, roc_auc
    from ..hyperinf.metrics import select_lowest_influence

    validate_args(task, model_args, inf, training_args)
    if inf.num_threads is not None:
        torch.set_num_threads(inf.num_threads)
    set_seed(training_args.seed)
    base = model_args.model_name_or_path
    tokenizer = run_tokenizer(base, task.vocab_size, training_args)
    if task.task == "llm_selection":
        data = build_selection_task(task, tokenizer, training_args.seed)
        rows = _causal_lm_embedding_rows(base) if base else None
        if rows is not None:  # as for classification below: before the earlier run's files are touched
            _check_token_ids_fit(rows, base, data[:3], task, training_args)
        start_run_files(task, model_args, training_args)
        return run_llm_selection(task, model_args, inf, training_args, tokenizer, data)
    methods = parse_list(inf.methods)
    train, val, test, is_noisy, domains = build_task(task, tokenizer, training_args.seed)
    # a given base is loaded and wrapped (its own fixed seed) before the earlier run's files are touched: a checkpoint
    # that cannot be loaded or adapted fails with them in place (the tiny base is pretrained after start_run_files)
    classifier = None
    if base:
        classifier = lora_classifier(base, len(domains), model_args, training_args.seed, tokenizer.pad_token_id)
        rows = classifier.get_input_embeddings().weight.shape[0]
        _check_token_ids_fit(rows, base, (train, val, test), task, training_args)
    start_run_files(task, model_args, training_args)
    print(
        f"task: {len(domains)} domains, train {len(train)} ({int(is_noisy.sum())} flipped), val {len(val)}, "
        f"test {len(test)}, {task.max_length} tokens each"
    )

    base_dir = base or prepare_base(model_args, tokenizer, training_args)
    if classifier is None:
        classifier = lora_classifier(base_dir, len(domains), model_args, training_args.seed, tokenizer.pad_token_id)
    model = fine_tune(
        classifier,
        train,
        training_args,
        "full",
        resume_from_checkpoint=training_args.resume_from_checkpoint,
    )
    clean_train = train.remove_columns("labels").rename_column("clean_label", "labels")
    eval_batch = training_args.per_device_eval_batch_size
    fit_metrics = {
        "val": evaluate(model, val, eval_batch),
        "test": evaluate(model, test, eval_batch),
        "train_clean_subset_accuracy": evaluate(
            model, clean_train.select(np.flatnonzero(~is_noisy)), eval_batch
        )["accuracy"],
        "train_flipped_fit": evaluate(model, train.select(np.flatnonzero(is_noisy)), eval_batch)["accuracy"],
    }
    print(
        f"fine-tuned: val acc {fit_metrics['val']['accuracy']:.3f}, test loss {fit_metrics['test']['loss']:.3f}, "
        f"clean-train acc {fit_metrics['train_clean_subset_accuracy']:.3f}, flipped labels fit "
        f"{fit_metrics['train_flipped_fit']:.3f}"
    )

    influence_train = train.select_columns(["input_ids", "labels"])
    results: dict = {
        "config": {
            "methods": methods,
            "select_fraction": inf.select_fraction,
            "inspect_fraction": inf.inspect_fraction,
            "device": str(model.device),
            "num_threads": torch.get_num_threads(),
        },
        "fine_tune": fit_metrics,
        "methods": {},
        "scores": {},
    }
    for method in methods:
        name, options = estimator_options(method, inf)
        with PeakMemory(model.device) as meter:
            estimator = InfluenceEstimator(model, name, **options)
            scores = estimator.fit(influence_train).scores(val)
        fractions, recall = detection_curve(scores, is_noisy)
        info = estimator.layer_info
        res = {
            "recall_at_inspect": recall_at_fraction(scores, is_noisy, inf.inspect_fraction),
            "recall_at_0.1": recall_at_fraction(scores, is_noisy, 0.1),
            "recall_at_0.4": recall_at_fraction(scores, is_noisy, 0.4),
            "auc": roc_auc(scores, is_noisy),
            "seconds": meter.seconds,
            "fit_seconds": estimator.timings.get("fit_s", float("nan")),
            "scores_seconds": estimator.timings.get("scores_s", float("nan")),
            "peak_memory_mb": meter.peak_bytes / 2**20,
            "state_mb": estimator.state_nbytes() / 2**20,
            "curve_fractions": fractions.tolist(),
            "curve_recall": recall.tolist(),
        }
        if estimator.skipped_layers:  # zero gradient for every training example: they add 0 to every score
            res["skipped_layers"] = estimator.skipped_layers
        if name == "hyperinf":
            res.update(schulz_summary(info))
        results["methods"][method] = res
        results["scores"][method] = scores.tolist()
        print(
            json.dumps(
                {
                    "method": method,
                    **{
                        k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in res.items()
                        if not k.startswith("curve")
                    },
                }
            )
        )

    print(
        f"\n{'method':<20}{'recall@' + format(inf.inspect_fraction, '.0%'):>12}{'AUC':>8}{'time s':>9}"
        f"{'peak MB':>10}{'state MB':>10}"
    )
    for method, res in results["methods"].items():
        print(
            f"{method:<20}{res['recall_at_inspect']:>12.3f}{res['auc']:>8.3f}{res['seconds']:>9.2f}"
            f"{res['peak_memory_mb']:>10.1f}{res['state_mb']:>10.3f}"
        )

    # Data selection: retrain the same LoRA init on the lowest-influence share; compare with random and full data.
    selection = {"full": {**fit_metrics["test"], "size": len(train)}}
    rng = np.random.default_rng(training_args.seed + 1)
    groups = np.asarray(train["labels"]) if inf.select_per_class else None
    subsets = {"random": select_lowest_influence(rng.random(len(train)), inf.select_fraction, groups)}
    for method in methods:
        subsets[method] = select_lowest_influence(results["scores"][method], inf.select_fraction, groups)
    if inf.select_fraction < 1.0:
        for name, index in subsets.items():
            retrained = fine_tune(
                lora_classifier(base_dir, len(domains), model_args, training_args.seed, tokenizer.pad_token_id),
                train.select(index),
                training_args,
                f"select_{name}",
            )
            metrics = evaluate(retrained, test, eval_batch)
            selection[name] = {**metrics, "size": int(len(index)), "flipped_kept": int(is_noisy[index].sum())}
            print(
                f"selection {name:<20} kept {len(index)} ({selection[name]['flipped_kept']} flipped): "
                f"test loss {metrics['loss']:.4f}, acc {metrics['accuracy']:.3f}"
            )
    results["selection"] = selection
    out = training_args.output_dir
    atomic_write_results(
        os.path.join(out, "hyperinf_results.json"), {k: v for k, v in results.items() if k != "scores"}, 2
    )
    atomic_write_results(
        os.path.join(out, "hyperinf_scores.json"), {"is_noisy": is_noisy.tolist(), **results["scores"]}, None
    )
    for path in plot_results(results, out):
        print(f"saved {path}")
    results["is_noisy"] = is_noisy
    return results


def lora_causal_lm(base_dir: str, model_args: ModelArguments, seed: int):
    """The pretrained causal LM wrapped with a fresh LoRA adapter (fixed seed)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return get_peft_model(model, _lora_config(model_args, "CAUSAL_LM"))


def _kept_share(row: dict, num_train: int) -> float:
    """The share of the training set a selection row kept: its `size` over `num_train`. `select_lowest_influence`
    keeps `round(fraction * g)`, at least 1, of each group of `g` examples, so with small groups (many instruction
    kinds and domains, few examples) more is kept than `--select_fractions` asks (24 examples: 14 for 25%)."""
    return row["size"] / num_train


def _kept_share_text(row: dict, num_train: int) -> str:
    share = _kept_share(row, num_train)
    if abs(share - row["fraction"]) <= 0.01:
        return f"{row['fraction']:.0%}"
    return f"{share:.0%} (asked {row['fraction']:.0%})"


def llm_selection_table(results: dict) -> str:
    """Markdown table of the llm_selection run: one row per training set."""
    lines = [
        "| training set | keep | size | corrupted kept | test loss | test token acc | target loss | target token acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["selection"]:
        lines.append(
            f"| {row['name']} | {_kept_share_text(row, results['config']['num_train'])} | {row['size']} | "
            f"{row['corrupted_kept']} | "
            f"{row['test']['loss']:.4f} | {row['test']['token_accuracy']:.3f} | {row['target']['loss']:.4f} | "
            f"{row['target']['token_accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_llm_selection(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["selection"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in (
        (axes[0], "loss", "test loss (response tokens)"),
        (axes[1], "token_accuracy", "test token accuracy"),
    ):
        names = [r["name"] for r in rows if r["name"] not in ("full", "clean (oracle)")]
        for name in dict.fromkeys(names):
            num_train = results["config"]["num_train"]
            pts = sorted((_kept_share(r, num_train), r["test"][metric]) for r in rows if r["name"] == name)
            style = "k--o" if name == "random" else "-o"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
        full = next(r for r in rows if r["name"] == "full")
        ax.axhline(full["test"][metric], color="gray", linestyle=":", label="full (corrupted) set")
        oracle = next((r for r in rows if r["name"] == "clean (oracle)"), None)
        if oracle is not None:
            ax.plot(
                [oracle["fraction"]], [oracle["test"][metric]], "k*", markersize=10, label="clean examples (oracle)"
            )
        ax.set_xlabel("share of the training set kept (most helpful first)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"LLM data selection, {results['config']['corrupt_rate']:.0%} corrupted answers")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def build_selection_task(task: TaskArguments, tokenizer, seed: int):
    """The instruction data of `--task llm_selection`: `(train, target, test, corrupted)`, checked (at least one
    corrupted and one clean training example) before any training."""
    from ..hyperinf.selection import build_instruction_task

    train, target, test, corrupted = build_instruction_task(
        tokenizer,
        parse_list(task.domains),
        seed=seed,
        prompt_tokens=task.prompt_tokens,
        answer_tokens=task.answer_tokens,
        num_target=task.num_val,
        num_test=task.num_test,
        max_train=task.max_train,
        corrupt_rate=task.noise_rate,
        kinds=tuple(parse_list(task.instruction_kinds)),
    )
    chosen = noisy_count(task.noise_rate, len(train), task.max_train, "corrupted answers")
    if not corrupted.any():  # the answers are shuffled within each kind: a kind chosen fewer than twice corrupts none
        raise ValueError(
            f"--noise_rate {task.noise_rate} chooses {chosen} of the {len(train)} training examples (--max_train "
            f"{task.max_train}) but corrupts no answer: answers are shuffled only among the chosen examples of one "
            "--instruction_kinds kind (a kind chosen fewer than twice keeps its answers, and a topic answer that "
            "would land on its own domain stays clean), and the recipe measures how well each method finds the "
            "corrupted examples; raise --noise_rate or --max_train."
        )
    return train, target, test, corrupted


def run_llm_selection(
    task: TaskArguments, model_args: ModelArguments, inf: InfluenceArguments, training_args, tokenizer, data
) -> dict:
    """LoRA causal LM on instruction data with corrupted answers; fine-tune on each method's top-k% selection.

    Every method scores the training examples by their influence on the mean response loss of the clean target set
    (`--num_val` examples); the most helpful share (`--select_fractions`, within each instruction kind and document
    domain unless `--select_per_class false`) and a random
    share of the same size are used to retrain the same LoRA initialisation, evaluated on held-out clean test examples
    (`--num_test`) and on the target set. `tokenizer` is the run's (`run_tokenizer`), `data` what
    `build_selection_task` returns.
    """
    import numpy as np
    import torch

    from ..hyperinf import InfluenceEstimator, PeakMemory, recall_at_fraction, roc_auc
    from ..hyperinf.gradients import PaddingCollator
    from ..hyperinf.metrics import select_lowest_influence
    from ..hyperinf.selection import evaluate_response_loss
    from ..utils import atomic_write_text

    methods = parse_list(inf.methods)
    fractions = parse_fractions(inf.select_fractions)
    base = model_args.model_name_or_path
    train, target, test, corrupted = data
    print(
        f"llm_selection: train {len(train)} ({int(corrupted.sum())} corrupted answers), target {len(target)}, "
        f"test {len(test)}"
    )
    base_dir = base or prepare_base(model_args, tokenizer, training_args)
    collator = PaddingCollator(("input_ids", "labels", "attention_mask"), pad_token_id=tokenizer.pad_token_id)
    pad = tokenizer.pad_token_id

    def train_on(index, name, resume=None):
        model = lora_causal_lm(base_dir, model_args, training_args.seed)
        data = train if index is None else train.select(index)
        return fine_tune(model, data, training_args, name, resume_from_checkpoint=resume, data_collator=collator)

    def measure(model):
        batch = training_args.per_device_eval_batch_size
        return {"test": evaluate_response_loss(model, test, batch, pad_token_id=pad),
                "target": evaluate_response_loss(model, target, batch, pad_token_id=pad)}  # fmt: skip

    model = train_on(None, "full", training_args.resume_from_checkpoint)
    full = measure(model)
    rows = [{"name": "full", "fraction": 1.0, "size": len(train), "corrupted_kept": int(corrupted.sum()), **full}]
    print(f"fine-tuned on all: test loss {full['test']['loss']:.4f}, token acc {full['test']['token_accuracy']:.3f}")
    clean_index = np.flatnonzero(~corrupted)  # the oracle control: every uncorrupted example
    clean = measure(train_on(clean_index, "clean_oracle"))
    rows.append({"name": "clean (oracle)", "fraction": len(clean_index) / len(train), "size": int(len(clean_index)),
                 "corrupted_kept": 0, **clean})  # fmt: skip
    print(f"fine-tuned on the clean examples: test loss {clean['test']['loss']:.4f}")
    influence_train = train.select_columns(["input_ids", "labels"])
    influence_target = target.select_columns(["input_ids", "labels"])
    results: dict = {
        "config": {
            "task": "llm_selection",
            "methods": methods,
            "select_fractions": fractions,
            "corrupt_rate": task.noise_rate,
            "num_train": len(train),
            "num_corrupted": int(corrupted.sum()),
            "seed": training_args.seed,
            "num_threads": torch.get_num_threads(),
        },
        "methods": {},
        "scores": {},
    }
    for method in methods:
        name, options = estimator_options(method, inf)
        with PeakMemory(model.device) as meter:
            estimator = InfluenceEstimator(model, name, **options)
            scores = estimator.fit(influence_train).scores(influence_target)
        results["scores"][method] = scores.tolist()
        results["methods"][method] = {
            "auc_corrupted": roc_auc(scores, corrupted),
            "recall_corrupted_at_inspect": recall_at_fraction(scores, corrupted, inf.inspect_fraction),
            "seconds": meter.seconds,
            "peak_memory_mb": meter.peak_bytes / 2**20,
        }
        print(json.dumps({"method": method, **{k: round(v, 4) for k, v in results["methods"][method].items()}}))
    # within each (instruction kind, document domain): influence on the mean target loss otherwise shifts the domain
    # mix (seed 42: the most common domain fell from 30% to 14% of the kept half, and every method lost to random)
    groups = [f"{k}/{d}" for k, d in zip(train["kind"], train["domain"])] if inf.select_per_class else None
    rng = np.random.default_rng(training_args.seed + 1)
    candidates = {"random": rng.random(len(train)), **{m: np.asarray(results["scores"][m]) for m in methods}}
    for fraction in fractions:
        for name, scores in candidates.items():
            index = select_lowest_influence(scores, fraction, groups)
            metrics = measure(train_on(index, f"select_{name}_{fraction:g}"))
            rows.append(
                {
                    "name": name,
                    "fraction": fraction,
                    "size": int(len(index)),
                    "corrupted_kept": int(corrupted[index].sum()),
                    **metrics,
                }  # fmt: skip
            )
            print(
                f"keep {fraction:.0%} by {name:<20} ({len(index)}, {rows[-1]['corrupted_kept']} corrupted): "
                f"test loss {metrics['test']['loss']:.4f}, token acc {metrics['test']['token_accuracy']:.3f}"
            )
    results["selection"] = rows
    out = training_args.output_dir
    atomic_write_results(
        os.path.join(out, "llm_selection_results.json"), {k: v for k, v in results.items() if k != "scores"}
    )
    atomic_write_results(
        os.path.join(out, "llm_selection_scores.json"), {"corrupted": corrupted.tolist(), **results["scores"]}
    )
    table = llm_selection_table(results)
    atomic_write_text(os.path.join(out, "llm_selection.md"), table)
    plot_llm_selection(results, os.path.join(out, "llm_selection.png"))
    print("\n" + table)
    results["corrupted"] = corrupted
    return results


def main(argv: list[str] | None = None) -> dict:
    from ._common import parse_recipe_args, refuse_multiple_processes

    refuse_multiple_processes(
        "hyperinf",
        "its Trainer runs (pretraining, LoRA fine-tuning, the data-selection retrainings) would be data-parallel "
        "with a larger global batch, and every process would write the same files, so the rankings and losses would "
        "differ from one process",
        "to score a large training set on several processes, call `hf_ext.hyperinf.InfluenceEstimator` from your own "
        "script under torchrun / accelerate launch: it splits the training set between the ranks and returns every "
        'example\'s score, in dataset order, on every process (docs/hyperinf.md, "Data-parallel use")',
    )
    start = time.perf_counter()
    task, model_args, inf, training_args = parse_recipe_args(
        (TaskArguments, ModelArguments, InfluenceArguments, HyperInfTrainingArguments), argv
    )
    results = run(task, model_args, inf, training_args)
    print(f"total {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
