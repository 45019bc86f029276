"""Canary memorization in federated LoRA vs full fine-tuning: exact/approximate extraction vs rounds, with defenses.

Federated LoRA vs full fine-tuning with canaries: memorization (exact / approximate extraction) vs rounds, with
defenses, in the federated setting, a centralized one (one client holding all the data, same optimizer steps) or both.

Run as `python scripts/federated.py`, `accelerate launch scripts/federated.py` or `hf-ext run federated`, in one
process (a multi-process launch is refused up front; the Flower deployment spreads clients over machines).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

from ..federated.simulation import FederatedArguments
from ..federated.trainer import PrivateTrainingArguments
from ..utils.io import atomic_savefig, atomic_write_results, atomic_write_text

BASES = ("full", "lora", "lora_merge")
MODIFIERS = ("goldfish", "dp", "clientdp", "secagg")
SETTINGS = ("federated", "centralized", "both")
CENTRAL_PREFIX = "centralized/"
RESULT_FILES = ("results.json", "memorization_table.md", "memorization_vs_rounds.png")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tune this pretrained causal LM instead of a tiny model from config."}
    )
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny Llama built from config."})
    intermediate_size: int = field(default=128, metadata={"help": "MLP width of the tiny model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the tiny model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the tiny model."})
    pretrain_steps: int = field(
        default=100,
        metadata={"help": "Centralised warm-up steps of the tiny model on the public documents before fine-tuning."},
    )


@dataclass
class DataArguments:
    vocab_size: int = field(default=512, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to load instead of building one."})
    num_clients: int = field(default=3, metadata={"help": "Number of clients (non-IID split by --split_column)."})
    split_column: str = field(default="domain", metadata={"help": "Column whose groups go to clients (non-IID)."})
    docs_per_client: int = field(default=2, metadata={"help": "Documents per client (<= 0: all of them)."})
    block_size: int = field(
        default=128,
        metadata={
            "help": "Tokens per training block. Each canary copy is one block: canaries (and their exposure baseline) "
            "are cut to the whole words that fit, so that probes compare only text trained on. Must exceed the "
            "longest --prefix_lengths plus --window by enough that every cut canary keeps that many tokens (the run "
            "names the size needed)."
        },
    )
    num_canaries: int = field(default=10, metadata={"help": "Distinct canaries injected into the clients' data."})
    canary_words: int = field(
        default=50, metadata={"help": "Words per canary before the cut to one --block_size block."}
    )
    replication: str = field(
        default="10:0.3,1:0.7",
        metadata={
            "help": "Canary replication counts and fractions, 'count:fraction,...', the fractions summing to 1 (the "
            "share of the canaries replicated that many times; paper: 30% 10x, 70% once)."
        },
    )
    canary_source: str = field(
        default="test_docs",
        metadata={"help": "'test_docs': canary bodies are held-out corpus documents; 'random_words': random words."},
    )
    canary_assignment: str = field(
        default="proportional", metadata={"help": "'proportional' (paper) or 'single_client' canary copies."}
    )
    prefix_lengths: str = field(
        default="5,10,20", metadata={"help": "Prompt lengths in tokens (paper: 10,50,100,200,500)."}
    )
    window: int = field(default=50, metadata={"help": "Tokens compared for exact / approximate memorization."})
    bleu_threshold: float = field(default=0.75, metadata={"help": "Character-BLEU threshold of approximate match."})
    frequency_penalty: float = field(
        default=0.0, metadata={"help": "Additive frequency penalty during extraction (paper 1.0; 0 = greedy)."}
    )
    max_eval_blocks: int = field(default=16, metadata={"help": "Held-out blocks for the utility (eval loss)."})


@dataclass
class ComparisonArguments:
    configs: str = field(
        default="full,lora,lora+goldfish,lora+dp",
        metadata={
            "help": "Comma-separated runs: a base (full, lora, lora_merge) plus '+'-joined defenses (goldfish, dp, "
            "clientdp, secagg)."
        },
    )
    setting: str = field(
        default="federated",
        metadata={
            "help": "'federated' (the clients of --num_clients), 'centralized' (one client holding all their data and "
            "canary copies, same rounds, local steps x num_clients per round: the same optimizer steps and tokens) or "
            "'both' (runs named 'centralized/<run>' next to the federated ones)."
        },
    )
    lora_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of LoRA runs."})
    full_learning_rate: float = field(default=5e-3, metadata={"help": "Learning rate of full fine-tuning runs."})
    defense_goldfish_k: int = field(default=4, metadata={"help": "Goldfish k for '+goldfish' runs."})
    defense_goldfish_context_width: int = field(default=13, metadata={"help": "Goldfish hashed context width."})
    defense_dp_clip_norm: float = field(default=1.0, metadata={"help": "Per-sample clip norm for '+dp' runs."})
    defense_dp_noise_multiplier: float = field(default=1.0, metadata={"help": "DP-SGD noise multiplier for '+dp'."})
    defense_client_clip_norm: float = field(default=1.0, metadata={"help": "Client update clip for '+clientdp'."})
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads for this process (1 is fastest for tiny models)."}
    )
    defense_client_noise_multiplier: float = field(default=0.1, metadata={"help": "Server noise for '+clientdp'."})


@dataclass
class RecipeFederatedArguments(FederatedArguments):
    num_rounds: int = field(default=4, metadata={"help": "Number of FedAvg rounds (every client trains each round)."})
    local_steps: int = field(
        default=40, metadata={"help": "Optimizer steps per client per round; <= 0 means use --local_epochs."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scaling = alpha / r)."})


@dataclass
class FederatedTrainingArguments(PrivateTrainingArguments):
    output_dir: str = field(default="outputs/federated", metadata={"help": "Where results, table and PNG go."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Blocks per client step."})
    learning_rate: float = field(
        default=1e-2, metadata={"help": "Not used (refused if set): use --lora_learning_rate / --full_learning_rate."}
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Schedule within a client's round."})
    warmup_steps: float = field(default=0, metadata={"help": "Warmup steps per client round."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=1000, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="no",
        metadata={
            "help": "Not used (refused unless 'no', as are --save_steps, --save_total_limit, --eval_strategy and "
            "--eval_steps): the recipe cannot resume, so its Trainers do not checkpoint, and it evaluates after every "
            "round itself."
        },
    )
    report_to: str = field(default="none", metadata={"help": "Logging integrations."})
    disable_tqdm: bool = field(default=True, metadata={"help": "Hide the per-client progress bars."})


def parse_configs(text: str) -> list[tuple[str, str, set[str]]]:
    """'full,lora+dp' -> [(name, base, modifiers)], validated."""
    out = []
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        base, *mods = item.split("+")
        if base not in BASES:
            raise ValueError(f"--configs entry {item!r}: base must be one of {BASES}.")
        bad = [m for m in mods if m not in MODIFIERS]
        if bad:
            raise ValueError(f"--configs entry {item!r}: unknown defenses {bad}; choose from {MODIFIERS}.")
        if base == "full" and "dp" in mods:
            raise ValueError("--configs: '+dp' applies DP-SGD to LoRA parameters; use it with a lora base.")
        out.append((item, base, set(mods)))
    if not out:
        raise ValueError("--configs is empty: name at least one run, e.g. 'full,lora'.")
    if len({n for n, _, _ in out}) != len(out):
        raise ValueError("--configs lists the same run twice.")
    return out


def parse_replication(text: str) -> dict[int, float]:
    try:
        pairs = [p.split(":") for p in text.split(",") if p.strip()]
        out = {int(a): float(b) for a, b in pairs}
    except ValueError as err:
        raise ValueError(f"--replication must look like '10:0.5,1:0.5', got {text!r}.") from err
    if not out or any(k < 1 for k in out) or any(not (math.isfinite(v) and v >= 0) for v in out.values()):
        raise ValueError(f"--replication needs counts >= 1 and fractions >= 0, got {text!r}.")
    # each fraction is the share of the --num_canaries canaries replicated that often (the paper: 30% ten times, 70%
    # once); make_canaries would rescale any other sum silently (10:0.5,1:0.7 became 42% / 58%)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-3:
        example = ",".join(f"{k}:{v / total:.3g}" for k, v in out.items()) if total > 0 else "10:0.3,1:0.7"
        raise ValueError(
            f"--replication fractions must sum to 1 (each is the share of the --num_canaries canaries replicated "
            f"that many times), got {total:g} from {text!r}; e.g. --replication {example}."
        )
    return out


def parse_ints(text: str, arg: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"{arg} must be comma-separated integers, got {text!r}.") from err
    if not vals or min(vals) < 1:
        raise ValueError(f"{arg} must hold positive integers, got {text!r}.")
    return vals


# Flags of FederatedArguments / PrivateTrainingArguments that the recipe sets itself for every run: a value given on
# the command line would be ignored, so it is refused by name with the flag to use instead.
SET_PER_RUN = {
    "use_lora": "the base of each --configs entry (full, lora, lora_merge)",
    "aggregation": "the base of each --configs entry ('lora' averages the factors, 'lora_merge' merges then averages)",
    "secure_aggregation": "'+secagg' in --configs",
    "client_dp_clip_norm": "'+clientdp' in --configs with --defense_client_clip_norm",
    "client_dp_noise_multiplier": "'+clientdp' in --configs with --defense_client_noise_multiplier",
    "goldfish_k": "'+goldfish' in --configs with --defense_goldfish_k",
    "goldfish_context_width": "--defense_goldfish_context_width",
    "dp_clip_norm": "'+dp' in --configs with --defense_dp_clip_norm",
    "dp_noise_multiplier": "'+dp' in --configs with --defense_dp_noise_multiplier",
    "learning_rate": "--lora_learning_rate and --full_learning_rate",
    "max_steps": "--local_steps (client steps per round) and --pretrain_steps",
    "num_train_epochs": "--local_epochs with --local_steps 0",
    "secagg_clipping_range": "the Flower apps (the recipe's in-process secure aggregation does not clip)",
    "secagg_max_weight": "the Flower apps (the recipe's in-process secure aggregation does not use it)",
}
# Trainer flags the recipe does not honour, refused by name before any work (a strategy unless it is "no"; the others
# whatever their value). The recipe evaluates the model itself after every round, and it cannot resume, so none of its
# Trainers (the pretrain stage, each client's round: `client_training_args` forces both strategies to "no") evaluates
# or checkpoints: the pretrain stage failed in transformers for want of an eval_dataset after the earlier results had
# been removed, and the client runs ignored these flags.
_EVALUATES_ITSELF = (
    "the recipe evaluates the model itself after every round (eval_loss on --max_eval_blocks held-out blocks, next to "
    "the memorization probes); its Trainers (the pretrain stage and each client's round) have no eval_dataset. Drop "
    "the flag (--max_eval_blocks sizes the evaluation)."
)
_NO_CHECKPOINTS = (
    "the recipe cannot resume (--resume_from_checkpoint is refused) and each client's Trainer trains one round from "
    "the server's model, so a checkpoint would never be read: its Trainers do not checkpoint. Drop the flag."
)
NOT_HONOURED = {
    "eval_strategy": _EVALUATES_ITSELF,
    "eval_steps": _EVALUATES_ITSELF,
    "save_strategy": _NO_CHECKPOINTS,
    "save_steps": _NO_CHECKPOINTS,
    "save_total_limit": _NO_CHECKPOINTS,
}
_STRATEGIES = ("eval_strategy", "save_strategy")  # refused unless "no" (the recipe's value)
# Flags that only act on runs with one of these --configs defenses (or a LoRA base).
NEEDS = {
    "secure_aggregation_threshold": "secagg",
    "secure_aggregation_max_colluders": "secagg",
    "secure_aggregation_frac_bits": "secagg",
    "client_dp_noise_seed": "clientdp",
    "dp_noise_seed": "dp",
    "dp_delta": "dp",
    "dp_accountant": "dp",
    "lora_r": "lora",
    "lora_alpha": "lora",
    "lora_dropout": "lora",
    "lora_target_modules": "lora",
}


def check_ignored_flags(configs, data_args, fed_args, cmp_args, training_args, model_args=None) -> None:
    """Refuse, by name, every flag that these --configs and --setting would ignore."""
    from ._common import changed_from_default

    if model_args is not None:
        tiny = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "pretrain_steps"]
        if model_args.model_name_or_path:
            for name in changed_from_default(model_args, tiny):
                raise ValueError(
                    f"--{name} shapes or warms up the tiny model built from config and is ignored with "
                    "--model_name_or_path; drop it."
                )
        elif data_args.docs_per_client <= 0 and "pretrain_steps" in changed_from_default(model_args, tiny):
            raise ValueError(
                "--pretrain_steps warms the tiny model up on the documents no client holds, and with "
                "--docs_per_client <= 0 the clients hold them all: drop it or set --docs_per_client > 0."
            )
    if (data_args.tokenizer_name or (model_args is not None and model_args.model_name_or_path)) and (
        "vocab_size" in changed_from_default(data_args, ["vocab_size"])
    ):
        raise ValueError(
            "--vocab_size sizes the tokenizer built on the fly and is ignored with --tokenizer_name or "
            "--model_name_or_path; drop it."
        )
    refuse_not_honoured(training_args)
    for args in (fed_args, training_args):
        names = [f.name for f in dataclasses.fields(args) if f.name in SET_PER_RUN]
        for name in changed_from_default(args, names):
            raise ValueError(
                f"--{name} is set by the recipe for every run and would be ignored (got {getattr(args, name)!r}); "
                f"use {SET_PER_RUN[name]}."
            )
    present = {m for _, _, mods in configs for m in mods} | {"lora" for _, base, _ in configs if base != "full"}
    for args in (fed_args, training_args):
        names = [f.name for f in dataclasses.fields(args) if f.name in NEEDS and NEEDS[f.name] not in present]
        for name in changed_from_default(args, names):
            what = "a LoRA base (lora, lora_merge)" if NEEDS[name] == "lora" else f"'+{NEEDS[name]}'"
            raise ValueError(
                f"--{name} only applies to runs with {what} in --configs, and none of {cmp_args.configs!r} has it: "
                "drop the flag or add such a run."
            )
    if fed_args.local_steps > 0 and "local_epochs" in changed_from_default(fed_args, ["local_epochs"]):
        raise ValueError(
            f"--local_epochs only applies with --local_steps <= 0 (got --local_steps {fed_args.local_steps}); drop "
            "it or pass --local_steps 0."
        )
    lrs = fed_args.learning_rates()
    if lrs is not None:
        if cmp_args.setting != "federated":
            raise ValueError(
                f"--client_learning_rates sets one rate per federated client; --setting {cmp_args.setting} trains one "
                "centralized client: drop the flag or use --setting federated."
            )
        if len(lrs) != data_args.num_clients:
            raise ValueError(
                f"--client_learning_rates has {len(lrs)} values for --num_clients {data_args.num_clients}; give one "
                "per client."
            )
        refuse_per_base_rates(changed_from_default(cmp_args, PER_BASE_RATES))
        secagg = [name for name, _, mods in configs if "secagg" in mods]
        if secagg:  # FederatedArguments refuses the pair too, but only when that run starts, after the earlier ones
            raise ValueError(
                f"--client_learning_rates cannot be used with the '+secagg' runs of --configs ({', '.join(secagg)}): "
                "each client picks its own rate by its index from one list that every client receives, so the "
                "round-config digest the clients sign cannot tell an honest list from one a server chose to give "
                "every client but one a negligible rate, whose secure sum is then that client's update. Drop "
                "--client_learning_rates or the '+secagg' runs."
            )
    if "dp" in present and training_args.gradient_accumulation_steps != 1:
        raise ValueError(
            "'+dp' runs add DP-SGD noise once per optimizer step: set --gradient_accumulation_steps 1 and raise "
            "--per_device_train_batch_size instead."
        )
    if "dp" in present:  # what PrivateTrainingArguments refuses with DP-SGD on, checked before any run starts
        if training_args.fp16 and training_args.device.type != "cpu":  # PrivateTrainer refuses the GradScaler
            raise ValueError(
                "--fp16 on an accelerator trains with a loss scaler (torch.amp.GradScaler), which DP-SGD's own "
                "per-sample gradients bypass, so the '+dp' runs would fail at their first step: pass --bf16 true "
                "instead, or drop '+dp' from --configs."
            )
        if training_args.label_smoothing_factor:
            raise ValueError(
                f"--label_smoothing_factor {training_args.label_smoothing_factor} would be ignored by the '+dp' runs: "
                "DP-SGD clips each sample's gradient of the model's own loss, without smoothing. Leave it at 0 or drop "
                "'+dp' from --configs."
            )
        if getattr(training_args, "activation_checkpointing", False) or getattr(
            training_args, "gradient_checkpointing", False
        ):
            raise ValueError(
                "--gradient_checkpointing (--activation_checkpointing) does not work with the '+dp' runs: DP-SGD's "
                "per-sample gradients (torch.func vmap over grad) do not support activation checkpointing. Drop the "
                "flag (lower --per_device_train_batch_size if memory is short) or drop '+dp' from --configs."
            )
        if training_args.auto_find_batch_size:
            raise ValueError(
                "--auto_find_batch_size does not work with the '+dp' runs: an out-of-memory retry would change "
                "DP-SGD's Poisson sampling rate mid-run and keep the failed attempt's accounted steps, so the privacy "
                "spent would not be the planned one. Drop the flag and set --per_device_train_batch_size explicitly, "
                "or drop '+dp' from --configs."
            )
        strategy = getattr(training_args, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ValueError(
                f"--train_sampling_strategy {strategy} would be ignored by the '+dp' runs: DP-SGD draws Poisson "
                "batches, the sampling its accountant assumes. Leave it at 'random' or drop '+dp' from --configs."
            )


def refuse_not_honoured(training_args) -> None:
    """Refuse the Trainer flags of `NOT_HONOURED` that are set (a strategy other than "no", another flag changed
    from its default), naming the flag."""
    from ._common import changed_from_default

    for name in _STRATEGIES:
        value = str(getattr(getattr(training_args, name), "value", getattr(training_args, name)))
        if value != "no":
            raise ValueError(f"--{name} {value} would be ignored: {NOT_HONOURED[name]}")
    others = [name for name in NOT_HONOURED if name not in _STRATEGIES]
    for name in changed_from_default(training_args, others):
        raise ValueError(f"--{name} {getattr(training_args, name)} would be ignored: {NOT_HONOURED[name]}")


PER_BASE_RATES = ["full_learning_rate", "lora_learning_rate"]


def refuse_per_base_rates(names) -> None:
    """With `--client_learning_rates`, refuse the per-base rate flags among `names` (given on the command line or set
    to a non-default value): the per-client rates replace them in every run."""
    for name in PER_BASE_RATES:
        if name in names:
            raise ValueError(
                f"--{name} would be ignored: --client_learning_rates sets each client's rate in every run, full "
                "fine-tuning and LoRA alike. Drop one of the two flags."
            )


def check_data(data_args) -> None:
    """The client split and the canary bodies, checked on the embedded corpus before anything is written."""
    from ..data import load_corpus

    train = load_corpus("train")
    if data_args.split_column not in train.column_names:
        raise ValueError(
            f"--split_column {data_args.split_column!r} is not a corpus column; choose one of {train.column_names}."
        )
    groups = len(set(train[data_args.split_column]))
    if data_args.num_clients > groups:
        raise ValueError(
            f"--num_clients {data_args.num_clients} exceeds the {groups} distinct {data_args.split_column!r} values "
            "(every client needs whole groups): lower --num_clients or choose another --split_column."
        )
    if data_args.canary_source == "test_docs" and len(held_out_texts(data_args)) <= data_args.num_canaries:
        raise ValueError(
            "No held-out document is left for the exposure baseline (the canary bodies use them all); lower "
            "--num_canaries or --canary_words, or use --canary_source random_words."
        )


def check_lora_targets(model_args, data_args, fed_args) -> None:
    """--lora_target_modules must name modules of the model (checked on a meta-device copy: no memory, no data)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    targets = fed_args.target_modules()
    if targets == "all-linear":
        return
    if not targets:
        raise ValueError("--lora_target_modules is empty; name modules (e.g. 'q_proj,v_proj') or use 'all-linear'.")
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    else:
        config = tiny_llama_config(model_args, data_args.vocab_size)
    with torch.device("meta"):
        names = [n for n, _ in AutoModelForCausalLM.from_config(config).named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
        raise ValueError(
            f"--lora_target_modules names {missing}, which the model does not have; choose from {leaves} or use "
            "'all-linear'."
        )


def validate(model_args, data_args, fed_args, cmp_args, training_args) -> None:
    """All argument checks, before any data is loaded or anything is written."""
    from ..utils import ensure_writable_dir

    configs = parse_configs(cmp_args.configs)
    check_ignored_flags(configs, data_args, fed_args, cmp_args, training_args, model_args)
    if cmp_args.setting not in SETTINGS:
        raise ValueError(f"--setting must be one of {SETTINGS}, got {cmp_args.setting!r}.")
    if cmp_args.setting != "federated":
        client_level = sorted({m for _, _, mods in configs for m in mods} & {"secagg", "clientdp"})
        if client_level:
            raise ValueError(
                f"--setting {cmp_args.setting}: the defenses {client_level} act between clients and mean nothing with "
                "one client; drop them from --configs or use --setting federated."
            )
    parse_replication(data_args.replication)
    longest = max(parse_ints(data_args.prefix_lengths, "--prefix_lengths"))
    if data_args.window < 1:
        raise ValueError(f"--window must be >= 1, got {data_args.window}.")
    if not 0 < data_args.bleu_threshold <= 1:
        raise ValueError(
            f"--bleu_threshold must be in (0, 1] (a character-BLEU score), got {data_args.bleu_threshold}."
        )
    if not math.isfinite(data_args.frequency_penalty):
        raise ValueError(f"--frequency_penalty must be a finite number, got {data_args.frequency_penalty}.")
    if data_args.block_size < longest + data_args.window:
        raise ValueError(
            f"--block_size {data_args.block_size} is shorter than the longest prefix plus the window ({longest} + "
            f"{data_args.window}): a canary is trained on as one block of --block_size tokens, so every probe would "
            f"compare text never trained on. Raise --block_size above {longest + data_args.window} or lower "
            "--prefix_lengths / --window. Canaries are cut to the whole words within one block, which usually "
            f"leaves a few tokens less than --block_size, so a block of exactly {longest + data_args.window} is "
            "refused too: once the tokenizer is built (before anything is trained or written) the run names the "
            "--block_size that fits every canary."
        )
    if data_args.num_clients < 1:
        raise ValueError(f"--num_clients must be >= 1, got {data_args.num_clients}.")
    if any("secagg" in mods for _, _, mods in configs):  # threshold and --secure_aggregation_max_colluders
        if data_args.num_clients < 2:
            raise ValueError(
                f"'+secagg' hides each client's update in the sum of at least 2 clients; --num_clients is "
                f"{data_args.num_clients}: raise it or drop '+secagg' from --configs."
            )
        fed_args.threshold(data_args.num_clients)
    if data_args.block_size < 16:
        raise ValueError(f"--block_size must be >= 16, got {data_args.block_size}.")
    if data_args.num_canaries < 1:
        raise ValueError(f"--num_canaries must be >= 1, got {data_args.num_canaries}.")
    if data_args.canary_words < 1:  # make_canaries' own message named its `num_words` argument
        raise ValueError(f"--canary_words must be >= 1 (words per canary), got {data_args.canary_words}.")
    if data_args.canary_source not in ("test_docs", "random_words"):
        raise ValueError("--canary_source must be 'test_docs' or 'random_words'.")
    if data_args.canary_assignment not in ("proportional", "single_client"):
        raise ValueError("--canary_assignment must be 'proportional' or 'single_client'.")
    if cmp_args.torch_threads is not None and cmp_args.torch_threads < 1:
        raise ValueError(f"--torch_threads must be >= 1, got {cmp_args.torch_threads}.")
    if cmp_args.defense_goldfish_k < 2:
        raise ValueError(f"--defense_goldfish_k must be >= 2, got {cmp_args.defense_goldfish_k}.")
    if cmp_args.defense_goldfish_context_width < 1:
        raise ValueError(
            f"--defense_goldfish_context_width must be >= 1, got {cmp_args.defense_goldfish_context_width}."
        )
    if any("goldfish" in mods for _, _, mods in configs) and (
        cmp_args.defense_goldfish_context_width >= data_args.block_size
    ):
        raise ValueError(
            f"--defense_goldfish_context_width {cmp_args.defense_goldfish_context_width} is >= --block_size "
            f"{data_args.block_size}: Goldfish never drops the first h - 1 targets of a block, so it would drop "
            "nothing and the '+goldfish' runs would be plain training. Use a width below --block_size (default 13)."
        )
    for flag, value, positive in (
        ("--defense_dp_clip_norm", cmp_args.defense_dp_clip_norm, True),
        ("--defense_dp_noise_multiplier", cmp_args.defense_dp_noise_multiplier, False),
        ("--defense_client_clip_norm", cmp_args.defense_client_clip_norm, True),
        ("--defense_client_noise_multiplier", cmp_args.defense_client_noise_multiplier, False),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value!r}.")
        if positive and not value > 0:
            raise ValueError(f"{flag} must be > 0 (a clip norm; 0 would clip every update to nothing), got {value}.")
        if not positive and value < 0:
            raise ValueError(f"{flag} must be >= 0 (a noise multiplier; 0 adds no noise), got {value}.")
    for flag, value in (
        ("--lora_learning_rate", cmp_args.lora_learning_rate),
        ("--full_learning_rate", cmp_args.full_learning_rate),
    ):  # checked here, not by the optimizer of the first client's round after the earlier results were removed
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"{flag} must be a finite number >= 0 (the clients' learning rate), got {value!r}; e.g. {flag} "
                f"{ComparisonArguments.__dataclass_fields__[flag[2:]].default}."
            )
    if model_args.model_name_or_path is None and model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    from ._common import check_model_tokenizer_files, check_vocab_size

    # as `run` decides: the tokenizer of --tokenizer_name / --model_name_or_path is loaded, else the BPE is built
    check_model_tokenizer_files(model_args.model_name_or_path, data_args.tokenizer_name, tokenizer_flag=True)
    check_vocab_size(data_args.vocab_size, data_args.tokenizer_name or model_args.model_name_or_path)
    check_data(data_args)
    if any(base != "full" for _, base, _ in configs):
        check_lora_targets(model_args, data_args, fed_args)
    ensure_writable_dir(training_args.output_dir, "--output_dir")


def corpus_words(texts, limit: int = 4000) -> list[str]:
    """Distinct lowercase alphabetic words (4-12 letters) of the corpus, to write natural-looking canaries."""
    seen: dict[str, None] = {}
    for t in texts:
        for w in re.findall(r"[A-Za-z]{4,12}", t):
            seen.setdefault(w.lower(), None)
            if len(seen) >= limit:
                return sorted(seen)
    return sorted(seen)


# a held-out document whose canary body shares a run of this many words with a training document is not held out
TRAIN_OVERLAP_WORDS = 13


@functools.cache
def _train_word_runs(width: int) -> frozenset[str]:
    """Every run of `width` consecutive words in the training split of the corpus."""
    from ..data import load_corpus

    runs = set()
    for text in load_corpus("train")["text"]:
        words = text.split()
        runs.update(" ".join(words[i : i + width]) for i in range(len(words) - width + 1))
    return frozenset(runs)


def shares_training_text(text: str, width: int = TRAIN_OVERLAP_WORDS) -> bool:
    """Whether `text` has a run of `width` consecutive words that also occurs in the corpus's training split."""
    runs, words = _train_word_runs(width), text.split()
    return any(" ".join(words[i : i + width]) in runs for i in range(len(words) - width + 1))


def held_out_texts(data_args) -> list[str]:
    """Test-split documents long enough to serve as canaries, whose canary body (the first `canary_words` words)
    shares no run of [`TRAIN_OVERLAP_WORDS`] words with a training-split document: the embedded test split holds
    passages also in the training split (the first test document is a near copy of a training one), which the recipe
    trains on (private or public part), so a canary made of one would be seen more often than its replication count
    and a reference made of one would lower the exposure baseline."""
    from ..data import load_corpus

    docs = [
        t
        for t in load_corpus("test")["text"]
        if len(t.split()) >= data_args.canary_words
        and not shares_training_text(" ".join(t.split()[: data_args.canary_words]))
    ]
    if len(docs) < data_args.num_canaries:
        raise ValueError(
            f"Only {len(docs)} held-out documents have {data_args.canary_words} words and share no "
            f"{TRAIN_OVERLAP_WORDS}-word run with the training split; lower --canary_words or --num_canaries, or use "
            "--canary_source random_words."
        )
    return docs


def reference_texts(data_args, vocabulary, seed: int, limit: int = 12) -> list[str]:
    """Texts formatted like the canaries but never trained on (held-out documents after those used as canaries, or
    random words with another seed): the baseline of the loss-gap exposure."""
    from ..federated import make_canaries

    if data_args.canary_source == "test_docs":
        spare = held_out_texts(data_args)[data_args.num_canaries :][:limit]
        if not spare:
            raise ValueError("No held-out document is left for the exposure baseline; lower --num_canaries.")
        texts = spare
    else:
        texts = None
    refs = make_canaries(
        len(texts) if texts else limit, {1: 1.0}, data_args.canary_words, vocabulary, seed + 7919, texts
    )
    return [c.text for c in refs]


def cut_to_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """The longest whole-word prefix of `text` that tokenizes (no special tokens) to at most `max_tokens` tokens."""

    def fits(t: str) -> bool:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"]) <= max_tokens

    if fits(text):
        return text
    words = text.split()
    lo, hi = 0, len(words) - 1  # the answer keeps words[:k] for the largest k in [lo, hi] that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(" ".join(words[:mid])):
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _block_size_that_fits(text: str, tokenizer, need: int) -> int | None:
    """The smallest --block_size whose whole-word cut of `text` ([`cut_to_tokens`]) keeps at least `need` tokens
    (`None`: `text` itself has fewer)."""

    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    total = count(text)
    if total < need:
        return None
    words = text.split()
    lo, hi = 1, len(words)  # the fewest words whose prefix has `need` tokens
    while lo < hi:
        mid = (lo + hi) // 2
        if count(" ".join(words[:mid])) >= need:
            hi = mid
        else:
            lo = mid + 1
    block = count(" ".join(words[:lo]))
    while block < total and count(cut_to_tokens(text, tokenizer, block)) < need:  # token counts need not grow by word
        block += 1
    return block


def check_canary_lengths(canaries, tokenizer, prefix_lengths, data_args, uncut=None) -> None:
    """Refuse canaries (after the cut to --block_size) of at most the longest prefix plus the window tokens, before
    anything is trained or removed: `measure_memorization` would skip each of them ([`split_index`], the reference's
    rule) and the run would report no memorization at all. `uncut`: the canaries' texts before the cut; where the cut to one block is what made a canary
    too short, the error names the --block_size that fits (raising --canary_words cannot help there: a longer canary
    is cut to the same block again)."""
    need = max(prefix_lengths) + data_args.window + 1  # split_index skips T <= max prefix + window
    lengths = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in canaries]
    short = [i for i, n in enumerate(lengths) if n < need]
    if not short:
        return
    head = (
        f"{len(short)} of {len(canaries)} canaries have fewer than {need} tokens (the longest --prefix_lengths "
        f"{max(prefix_lengths)} plus --window {data_args.window} plus one; shortest "
        f"{min(lengths[i] for i in short)} tokens): "
        "memorization could not be measured on them."
    )
    blocks = [_block_size_that_fits(uncut[i], tokenizer, need) for i in short] if uncut is not None else []
    cut_short = [b for b in blocks if b is not None]
    if cut_short and len(cut_short) == len(short):
        raise ValueError(
            f"{head} Each canary copy is trained on as one block, so canaries are cut to the whole words within "
            f"--block_size {data_args.block_size} tokens, which leaves fewer than {need}: raise --block_size to "
            f"{max(cut_short)} (--canary_words cannot help, a longer canary is cut to the same block), or lower "
            "--prefix_lengths / --window."
        )
    also = (
        f" (and then --block_size to at least {max(cut_short)}: {len(cut_short)} of them are long enough but cut "
        f"to the whole words within --block_size {data_args.block_size} tokens)"
        if cut_short
        else ""
    )
    raise ValueError(
        f"{head} Raise --canary_words so that every canary has at least {need} tokens{also}, or lower "
        "--prefix_lengths / --window."
    )


def tiny_llama_config(model_args, vocab_size: int, tokenizer=None):
    """The config of the tiny Llama the flags describe (with `tokenizer`'s special-token ids when given)."""
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_attention_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        **ids,
    )


def build_tiny_model(model_args, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if model_args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(model_args, len(tokenizer), tokenizer))
    model.set_attn_implementation("eager")
    return model


def run(model_args, data_args, fed_args, cmp_args, training_args) -> dict:
    """Build clients with canaries, run every configuration, write results.json, the table and the PNG."""
    import copy

    from transformers import AutoTokenizer, Trainer, default_data_collator, set_seed

    from ..data import build_tokenizer, load_corpus, pack_dataset
    from ..federated import (
        FederatedSimulation,
        assign_canaries,
        build_client_dataset,
        canary_exposure,
        make_canaries,
        measure_memorization,
        split_by_column,
    )
    from ..utils.evaluation import causal_lm_eval_loss
    from ._common import clear_previous_results

    validate(model_args, data_args, fed_args, cmp_args, training_args)
    configs = parse_configs(cmp_args.configs)
    if cmp_args.torch_threads:
        import torch

        torch.set_num_threads(cmp_args.torch_threads)
    prefix_lengths = parse_ints(data_args.prefix_lengths, "--prefix_lengths")
    set_seed(training_args.seed)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
        from ._common import set_missing_pad_token

        # the tiny fresh model's pad token of its own (padding with EOS made EOS the embedding's padding_idx: zero at
        # init, no gradient from the inputs in the pretrain stage, and its tied output logit 0 after it)
        set_missing_pad_token(tokenizer, fresh_model=not model_args.model_name_or_path)
    else:
        tokenizer = build_tokenizer(data_args.vocab_size)
    from ._common import check_tokenizer_fits_model

    check_tokenizer_fits_model(tokenizer, model_args.model_name_or_path, data_args.tokenizer_name)

    train = load_corpus("train").shuffle(seed=training_args.seed)
    parts = split_by_column(train, data_args.split_column, data_args.num_clients)
    n = data_args.docs_per_client
    private = [p.select(range(min(n, len(p)))) if n > 0 else p for p in parts]
    public = [p.select(range(min(n, len(p)), len(p))) for p in parts] if n > 0 else []
    canaries = make_canaries(
        data_args.num_canaries,
        parse_replication(data_args.replication),
        num_words=data_args.canary_words,
        vocabulary=corpus_words(train["text"]),
        seed=training_args.seed,
        texts=held_out_texts(data_args) if data_args.canary_source == "test_docs" else None,
    )
    references = reference_texts(data_args, corpus_words(train["text"]), training_args.seed)
    # a canary copy is trained on as one block of --block_size tokens: probe and score only what was trained on (and
    # cut the exposure baseline the same way)
    uncut = [c.text for c in canaries]
    canaries = [dataclasses.replace(c, text=cut_to_tokens(c.text, tokenizer, data_args.block_size)) for c in canaries]
    references = [cut_to_tokens(t, tokenizer, data_args.block_size) for t in references]
    check_canary_lengths(canaries, tokenizer, prefix_lengths, data_args, uncut)
    copies = assign_canaries(canaries, [len(p) for p in private], data_args.canary_assignment, training_args.seed)
    clients = [
        build_client_dataset(p, [c.text for c in cs], tokenizer, data_args.block_size, seed=training_args.seed)
        for p, cs in zip(private, copies)
    ]
    eval_docs = load_corpus("test")
    if data_args.canary_source == "test_docs":  # canary bodies are test documents, trained on: keep them out of eval
        canary_docs = set(held_out_texts(data_args)[: data_args.num_canaries])
        eval_docs = eval_docs.filter(lambda text: text not in canary_docs, input_columns="text")
    eval_ds = pack_dataset(eval_docs, tokenizer, data_args.block_size)
    eval_ds = eval_ds.select(range(min(len(eval_ds), data_args.max_eval_blocks)))
    # the recipe cannot resume: an earlier run's results in this folder are never those of this run. Removed once the
    # tokenizer and the data are built, so a run refused on them leaves the earlier results alone
    clear_previous_results(training_args.output_dir, RESULT_FILES)

    base = build_tiny_model(model_args, tokenizer)
    if model_args.model_name_or_path is None and model_args.pretrain_steps > 0 and public:
        from datasets import concatenate_datasets

        pub = pack_dataset(concatenate_datasets(public), tokenizer, data_args.block_size)
        pre_args = dataclasses.replace(
            training_args,
            output_dir=os.path.join(training_args.output_dir, "pretrain"),
            max_steps=model_args.pretrain_steps,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            goldfish_k=None,
            dp_clip_norm=None,
        )
        Trainer(model=base, args=pre_args, train_dataset=pub, data_collator=default_data_collator).train()
    base_state = copy.deepcopy(base.state_dict())

    # Centralized: one client holding every federated client's blocks and canary copies, trained for the same
    # rounds with num_clients times the local steps (the federated run's optimizer steps and tokens in total).
    settings = []
    if cmp_args.setting in ("federated", "both"):
        settings.append(("", clients, fed_args))
    if cmp_args.setting in ("centralized", "both"):
        from datasets import concatenate_datasets

        central = [concatenate_datasets(clients).shuffle(seed=training_args.seed)]
        central_fed = dataclasses.replace(
            fed_args, local_steps=fed_args.local_steps * len(clients) if fed_args.local_steps > 0 else 0
        )
        settings.append((CENTRAL_PREFIX, central, central_fed))

    results: dict = {
        "canaries": [dataclasses.asdict(c) for c in canaries],
        "prefix_lengths": prefix_lengths,
        "client_sizes": [len(c) for c in clients],
        "setting": cmp_args.setting,
        "runs": {},
    }
    for (prefix, run_clients, setting_fed), (config, kind, mods) in itertools.product(settings, configs):
        name = prefix + config
        t0 = time.time()
        model = build_tiny_model(model_args, tokenizer)
        model.load_state_dict(base_state)
        fa = dataclasses.replace(
            setting_fed,
            use_lora=kind != "full",
            aggregation="merge_then_average" if kind == "lora_merge" else fed_args.aggregation,
            secure_aggregation="secagg" in mods,
            client_dp_clip_norm=cmp_args.defense_client_clip_norm if "clientdp" in mods else None,
            client_dp_noise_multiplier=cmp_args.defense_client_noise_multiplier if "clientdp" in mods else 0.0,
        )
        ta = dataclasses.replace(
            training_args,
            output_dir=os.path.join(training_args.output_dir, "runs", name.replace("+", "_").replace("/", "_")),
            learning_rate=cmp_args.full_learning_rate if kind == "full" else cmp_args.lora_learning_rate,
            goldfish_k=cmp_args.defense_goldfish_k if "goldfish" in mods else None,
            goldfish_context_width=cmp_args.defense_goldfish_context_width,
            dp_clip_norm=cmp_args.defense_dp_clip_norm if "dp" in mods else None,
            dp_noise_multiplier=cmp_args.defense_dp_noise_multiplier if "dp" in mods else 0.0,
            max_grad_norm=0.0 if "dp" in mods else training_args.max_grad_norm,
        )

        def on_round(r, sim, name=name):
            mem = measure_memorization(
                sim.model,
                tokenizer,
                canaries,
                prefix_lengths,
                window=data_args.window,
                bleu_threshold=data_args.bleu_threshold,
                frequency_penalty=data_args.frequency_penalty,
                seed=training_args.seed,
            )
            rec = {"eval_loss": causal_lm_eval_loss(sim.model, eval_ds)}
            for rep in sorted({c.replication for c in canaries}, reverse=True):
                members = [c.text for c in canaries if c.replication == rep]
                rec[f"exposure_{rep}x"] = canary_exposure(sim.model, tokenizer, members, references)
            for rep, block in mem["per_replication"].items():
                rec[f"exact_{rep}x"] = block["exact_mean"]
                rec[f"approx_{rep}x"] = block["approximate_mean"]
                rec[f"exact_worst_{rep}x"] = block["exact_worst"]
                rec[f"approx_worst_{rep}x"] = block["approximate_worst"]
                rec[f"bleu_{rep}x"] = block["bleu_mean"]
                rec[f"match_{rep}x"] = block["matching_tokens_mean"]
            print(f"[{name}] round {r}: " + ", ".join(f"{k}={v:.3f}" for k, v in rec.items()))
            # what the rates above are computed from: one record per canary and prefix length, and the rates per
            # prefix length (recomputable with `summarize_records(records, prefix_lengths)`)
            rec["memorization"] = {
                "per_replication": mem["per_replication"],
                "num_skipped": mem["num_skipped"],
                "records": mem["records"],
            }
            return rec

        sim = FederatedSimulation(
            model,
            run_clients,
            fa,
            ta,
            data_collator=default_data_collator,
            processing_class=tokenizer,
            round_callback=on_round,
        )
        history = sim.run()
        results["runs"][name] = {
            "setting": "centralized" if prefix else "federated",
            "num_clients": len(run_clients),
            "client_sizes": [len(c) for c in run_clients],
            # optimizer steps summed over clients and rounds (None when --local_steps <= 0: epochs instead)
            "optimizer_steps": fa.local_steps * len(run_clients) * fa.num_rounds if fa.local_steps > 0 else None,
            "history": history,
            "seconds": time.time() - t0,
        }
        if ta.dp_clip_norm is not None:
            # what the reported epsilon is computed from: each client's composed DP-SGD steps, as
            # (Poisson sampling rate, noise multiplier, steps) entries, at delta with this accountant
            results["runs"][name]["dp"] = {
                "clip_norm": ta.dp_clip_norm,
                "noise_multiplier": ta.dp_noise_multiplier,
                "delta": ta.dp_delta,
                "accountant": ta.dp_accountant,
                "client_steps": [a.state_dict()["history"] for a in sim.accountants],
            }
    write_outputs(results, training_args.output_dir)
    return results


def exposure_gain(history: list[dict], key: str = "exposure_10x") -> float:
    """Exposure after the last round minus that of the starting model (round 0): removes the fixed difference in
    difficulty between the canary and reference texts."""
    return history[-1][key] - history[0][key]


def write_outputs(results: dict, output_dir: str) -> None:
    """results.json, memorization_table.md (final round) and memorization_vs_rounds.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_results(os.path.join(output_dir, "results.json"), results)
    runs = results["runs"]
    first = next(iter(runs.values()))["history"][-1]
    reps = sorted(
        {int(k.split("_")[1][:-1]) for k in first if k.startswith("exact_") and "worst" not in k}, reverse=True
    )
    # runs without memorization records (every canary skipped by measure_memorization) still have their exposure
    exposed = sorted({int(k.split("_")[1][:-1]) for k in first if k.startswith("exposure_")}, reverse=True)
    counts = sorted(set(reps) | set(exposed), reverse=True)
    cols = [f"{m}_{r}x" for r in counts for m in ("exact", "approx", "bleu", "exposure") if f"{m}_{r}x" in first]
    gains = [f"exposure_{r}x" for r in counts if f"exposure_{r}x" in first]
    lines = [
        "| run | setting | clients | steps | rounds | eval loss | "
        + " | ".join(cols + [f"{c} gain" for c in gains])
        + " | eps (DP-SGD, max over clients) |",
        "|---" * (len(cols) + len(gains) + 7) + "|",
    ]
    for name, run in runs.items():
        hist = run["history"]
        last = hist[-1]
        eps = last.get("dp_epsilon_max")
        steps = run.get("optimizer_steps")
        lines.append(
            f"| {name} | {run.get('setting', 'federated')} | {run.get('num_clients', '-')} | "
            f"{'-' if steps is None else steps} | {last['round']} | {last['eval_loss']:.3f} | "
            + " | ".join([f"{last.get(c, 0.0):.3f}" for c in cols] + [f"{exposure_gain(hist, c):.3f}" for c in gains])
            + f" | {'-' if eps is None else f'{eps:.2f}'} |"
        )
    table = "\n".join(lines) + "\n"
    table += (
        "\nExposure gain: loss-gap exposure after the last round minus that of the starting model (round 0), "
        "nats per token. Centralized runs: one client holding all the clients' data and canary copies, same "
        "optimizer steps.\n"
    )
    deltas = sorted({run["dp"]["delta"] for run in runs.values() if "dp" in run})
    if deltas:
        table += f"Epsilon at delta {', '.join(f'{d:g}' for d in deltas)} (--dp_delta), example-level DP-SGD: one block; a canary in k blocks has only group privacy.\n"
    atomic_write_text(os.path.join(output_dir, "memorization_table.md"), table)
    print(table)

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    top = counts[0] if counts else None  # the most replicated canaries; None: only the loss panel has curves
    for name, run in runs.items():
        h = run["history"]
        rounds = [x["round"] for x in h]
        style = {"marker": "o", "label": name, "linestyle": "--" if run.get("setting") == "centralized" else "-"}
        if reps:
            axes[0].plot(rounds, [x.get(f"exact_{top}x", 0.0) for x in h], **style)
            axes[1].plot(rounds, [x.get(f"approx_{top}x", 0.0) for x in h], **style)
        if f"exposure_{top}x" in h[0]:
            axes[2].plot(rounds, [x[f"exposure_{top}x"] - h[0][f"exposure_{top}x"] for x in h], **style)
        axes[3].plot(rounds, [x["eval_loss"] for x in h], **style)
    axes[0].set_title(f"exact memorization ({top}x canaries, mean over prefixes)")
    axes[1].set_title(f"approximate memorization (char-BLEU >= thr, {top}x)")
    axes[2].set_title(f"exposure gain over round 0 ({top}x, nats/token)")
    axes[3].set_title("held-out loss (utility, dashed = centralized)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    atomic_savefig(fig, os.path.join(output_dir, "memorization_vs_rounds.png"), dpi=120)
    plt.close(fig)


#: The recipe's argument dataclasses, in the order `run` / `validate` take them.
ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    RecipeFederatedArguments,
    ComparisonArguments,
    FederatedTrainingArguments,
)


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args, refuse_multiple_processes

    refuse_multiple_processes(
        "federated",
        "the simulation plays every client in one process; launched on several, every client step would be "
        "data-parallel over --per_device_train_batch_size blocks per process, the reported client losses would be "
        "each process's own, secret client-level DP noise would differ between processes and every process would "
        "write the same files",
        "to spread the clients over machines use the Flower deployment (`flwr run`, see docs/federated.md)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    refuse_flags_set_per_run(argv)
    args = parse_recipe_args(ARGUMENT_CLASSES, argv, resume="refuse")
    return finish(run(*args))


def refuse_flags_set_per_run(argv: list[str]) -> None:
    """Refuse a flag the recipe sets for every run (`SET_PER_RUN`), or a Trainer flag it does not honour
    (`NOT_HONOURED`), by name, before parsing: the arguments' own checks would otherwise answer first with a fix for
    another flag (e.g. `--dp_clip_norm` asks for `--max_grad_norm 0`), which then leads to this refusal. Likewise
    `--full_learning_rate` / `--lora_learning_rate` next to `--client_learning_rates`, also at their default values
    (which the parsed arguments cannot tell apart)."""
    names = [token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")]
    for name in names:
        if name in SET_PER_RUN:
            raise ValueError(
                f"--{name} is set by the recipe for every run and would be ignored; use {SET_PER_RUN[name]}."
            )
    # before parsing too: `--eval_steps 5` alone would otherwise be answered first by the shared check ("pass
    # --eval_strategy steps with it"), which then leads to this refusal
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name not in NOT_HONOURED:
            continue
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        if name in _STRATEGIES and value == "no":
            continue
        shown = f"--{name} {value}" if value else f"--{name}"
        raise ValueError(f"{shown} would be ignored: {NOT_HONOURED[name]}")
    if "client_learning_rates" in names:
        refuse_per_base_rates(names)


if __name__ == "__main__":
    main()
