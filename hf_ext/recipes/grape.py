"""GRAPE data-mixture reweighting (or DoGE/DoReMi/uniform/fixed) over source domains for several target tasks.

Run as `python scripts/grape.py`, `accelerate launch scripts/grape.py` or `hf-ext run grape`. With no arguments the
sources are the embedded corpus domains and two target tasks are built from its held-out split; a tiny Llama is
trained from its config. Prints the final domain and task weights, writes `mixture.json` (train a fresh model on it
with `--reweight_method fixed --mixture_file <output_dir>/mixture.json`), `mixture_weights.png` and per-target losses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..grape.configuration_grape import GrapeConfig
from ..utils.io import atomic_open

DEFAULT_TARGETS = "io_network=networking+filesystem,language_numeric=language+numeric+datatypes"


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
class GrapeRecipeConfig(GrapeConfig):
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
        out[name.strip()] = value.strip()
    if not out:
        raise ValueError(f"{arg} must name at least one target task.")
    return out


def validate_args(data_args: GrapeDataArguments, model_args: GrapeModelArguments, args: GrapeRecipeConfig) -> None:
    """Check arguments before anything is loaded or written."""
    from ..data import corpus_domains
    from ..data.loading import hub_offline
    from ..utils.io import ensure_writable_dir

    if data_args.train_file and data_args.dataset_name:
        raise ValueError("Pass either --train_file or --dataset_name, not both.")
    if data_args.train_file and not os.path.isfile(data_args.train_file):
        raise ValueError(f"--train_file={data_args.train_file!r} does not exist.")
    if data_args.dataset_name and hub_offline() and not os.path.isdir(data_args.dataset_name):
        raise ValueError(
            f"--dataset_name={data_args.dataset_name!r} needs the Hub but HF_HUB_OFFLINE is set; use a local folder, "
            "--train_file, or no argument for the embedded corpus."
        )
    if not 0.0 < data_args.eval_fraction < 1.0:
        raise ValueError(f"--eval_fraction must be in (0, 1), got {data_args.eval_fraction}.")
    if data_args.target_files:
        for name, path in _parse_pairs(data_args.target_files, "--target_files").items():
            if not os.path.isfile(path):
                raise ValueError(f"--target_files: file {path!r} for task {name!r} does not exist.")
    elif data_args.train_file or data_args.dataset_name:
        needs = args.reweight_method in ("grape", "grape_ema", "grape_gap", "doge")
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
    if data_args.source_domains and not (data_args.train_file or data_args.dataset_name):
        unknown = sorted(set(data_args.source_domains.split(",")) - set(corpus_domains()))
        if unknown:
            raise ValueError(f"--source_domains has unknown domains {unknown}; use {corpus_domains()}.")
    if model_args.model_name_or_path is None and model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    if args.max_steps is None or args.max_steps <= 0:
        raise ValueError("--max_steps must be a positive number of optimizer steps.")
    ensure_writable_dir(args.output_dir, "--output_dir")


def _load_file(path: str, text_column: str):
    from datasets import load_dataset

    ext = path.rsplit(".", 1)[-1].lower()
    builder = {"txt": "text", "json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
    if builder is None:
        raise ValueError(f"{path!r}: unsupported extension {ext!r}; use .txt, .json, .jsonl, .csv or .parquet.")
    ds = load_dataset(builder, data_files={"train": path})["train"]
    if builder == "text" and text_column != "text":
        ds = ds.rename_column("text", text_column)
    return ds


def build_data(data_args: GrapeDataArguments, args: GrapeRecipeConfig):
    """Return `(sources, targets)`: raw-text datasets (sources carry the domain column)."""
    from datasets import load_dataset

    from ..data import load_corpus

    if data_args.train_file:
        sources = _load_file(data_args.train_file, args.text_column)
    elif data_args.dataset_name:
        sources = load_dataset(data_args.dataset_name, data_args.dataset_config_name)["train"]
    else:
        domains = data_args.source_domains.split(",") if data_args.source_domains else None
        sources = load_corpus("train", domains=domains)
    if data_args.source_domains and (data_args.train_file or data_args.dataset_name):
        keep = set(data_args.source_domains.split(","))
        sources = sources.filter(lambda r: str(r[args.domain_column]) in keep)
    if data_args.target_files:
        targets = {
            name: _load_file(path, args.text_column)
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


def run(data_args: GrapeDataArguments, model_args: GrapeModelArguments, args: GrapeRecipeConfig) -> dict:
    """Train with the chosen mixture method; print and save the final weights and per-target losses."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed

    from ..data import build_tokenizer
    from ..grape import GrapeTrainer
    from ..grape.data import prepare_target
    from ..utils.evaluation import causal_lm_eval_loss

    validate_args(data_args, model_args, args)
    set_seed(args.seed)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        with args.main_process_first(desc="build tokenizer"):
            tokenizer = build_tokenizer(data_args.vocab_size)
    sources, raw_targets = build_data(data_args, args)

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
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    st = trainer.mixture_state
    metrics = {
        "method": args.reweight_method,
        "train_loss": result.training_loss,
        "domain_weights": dict(zip(st.domain_names, st.domain_weights.tolist())),
        "average_domain_weights": dict(zip(st.domain_names, st.average_domain_weights().tolist())),
        "task_weights": dict(zip(st.task_names, st.task_weights.tolist())),
        "reweight_seconds": trainer.reweight_seconds,
        "train_seconds": result.metrics.get("train_runtime"),
    }
    if trainer.is_world_process_zero():
        metrics["target_eval_loss"] = {
            name: causal_lm_eval_loss(trainer.model, ds, args.per_device_eval_batch_size)
            for name, ds in eval_targets.items()
        }
        if metrics["target_eval_loss"]:
            losses = list(metrics["target_eval_loss"].values())
            metrics["mean_target_eval_loss"] = sum(losses) / len(losses)
        with atomic_open(os.path.join(args.output_dir, "grape_results.json"), "w") as fh:
            json.dump(metrics, fh, indent=2)
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


def main(argv: list[str] | None = None) -> dict:
    from ._common import finish, parse_recipe_args

    data_args, model_args, args = parse_recipe_args((GrapeDataArguments, GrapeModelArguments, GrapeRecipeConfig), argv)
    return finish(run(data_args, model_args, args))


if __name__ == "__main__":
    main()
