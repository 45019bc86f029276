"""Pretrain a causal LM (default: a tiny model from config) on the embedded corpus or your data; reload, eval, sample.

Run as `python scripts/pretrain.py`, `accelerate launch scripts/pretrain.py` or `hf-ext run pretrain`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this pretrained model (folder or hub id) instead of a fresh one."}
    )
    model_type: str = field(
        default="llama", metadata={"help": "Architecture of a fresh model (any AutoConfig model type, e.g. llama)."}
    )
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of a fresh model."})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width of a fresh model."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Layers of a fresh model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of a fresh model."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "KV heads (GQA); default = heads."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Extra config fields for a fresh model, as 'key=value,key=value' (values parsed as JSON)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa or eager."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset or local dataset folder; default: the embedded offline corpus."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "Local .txt/.json/.jsonl/.csv/.parquet file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training block (> 0)."})
    vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the on-the-fly tokenizer."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to load instead of building one."})
    max_eval_blocks: int | None = field(default=256, metadata={"help": "Evaluate on at most this many blocks."})
    prompt: str = field(default="The return value of", metadata={"help": "Prompt for the sample continuation."})
    max_new_tokens: int = field(default=40, metadata={"help": "Tokens generated for the sample continuation."})


@dataclass
class PretrainTrainingArguments(TrainingArguments):
    output_dir: str = field(default="outputs/pretrain", metadata={"help": "Where the model and tokenizer are saved."})
    max_steps: int = field(default=400, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device per step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per device per eval step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (int) or fraction of max_steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    logging_steps: int = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy during training."})
    eval_strategy: str = field(default="no", metadata={"help": "Evaluation strategy during training."})


def parse_config_overrides(text: str | None) -> dict:
    """Parse 'a=1,b=true,c=xielu' into a dict (values as JSON where possible)."""
    out: dict = {}
    if not text:
        return out
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"--config_overrides item {item!r} is not key=value.")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def validate_args(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Check arguments before any data is loaded or anything is written."""
    from ..data.loading import hub_offline
    from ..utils.io import ensure_writable_dir

    if data_args.block_size <= 0:
        raise ValueError(f"--block_size must be a positive number of tokens, got {data_args.block_size}.")
    if data_args.dataset_name and hub_offline() and not os.path.isdir(data_args.dataset_name):
        raise ValueError(
            f"--dataset_name={data_args.dataset_name!r} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set. Drop "
            "--dataset_name to train on the embedded offline corpus, or pass --train_file with a local file."
        )
    if model_args.model_name_or_path is None and model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    parse_config_overrides(model_args.config_overrides)
    ensure_writable_dir(training_args.output_dir, "--output_dir")


def build_model(model_args: ModelArguments, tokenizer, block_size: int):
    """A fresh model from config (or a pretrained one) sized for `tokenizer`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
        )
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_key_value_heads or model_args.num_attention_heads,
        max_position_embeddings=max(block_size, 256) * 4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    kwargs.update(parse_config_overrides(model_args.config_overrides))
    config = AutoConfig.for_model(model_args.model_type, **kwargs)
    return AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)


def causal_lm_eval_loss(model, dataset, batch_size: int = 32) -> float:
    """Token-weighted mean next-token loss of `model` over a packed dataset (`input_ids`, `labels`)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset[start : start + batch_size]
            ids = torch.tensor(batch["input_ids"], device=model.device)
            labels = torch.tensor(batch["labels"], device=model.device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += loss.item()
            count += int((target != -100).sum())
    return total / max(count, 1)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Train, save, reload with Auto classes, evaluate perplexity and sample. Returns the final metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, default_data_collator, set_seed

    import hf_ext  # noqa: F401  (registers the package's architectures)

    from ..data import build_tokenizer, load_text_datasets, pack_dataset

    validate_args(model_args, data_args, training_args)
    set_seed(training_args.seed)
    if data_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_name or model_args.model_name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        with training_args.main_process_first(desc="build tokenizer"):
            tokenizer = build_tokenizer(data_args.vocab_size)
    train_text, eval_text = load_text_datasets(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_file,
        data_args.validation_file,
        data_args.text_column,
        seed=training_args.seed,
    )
    with training_args.main_process_first(desc="pack datasets"):
        train_ds = pack_dataset(train_text, tokenizer, data_args.block_size, data_args.text_column)
        eval_ds = pack_dataset(eval_text, tokenizer, data_args.block_size, data_args.text_column)
    if data_args.max_eval_blocks is not None and len(eval_ds) > data_args.max_eval_blocks:
        eval_ds = eval_ds.select(range(data_args.max_eval_blocks))
    if len(train_ds) == 0:
        raise ValueError(f"No training block of {data_args.block_size} tokens could be formed; lower --block_size.")

    model = build_model(model_args, tokenizer, data_args.block_size)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    metrics = {
        "train_loss": train_result.training_loss,
        "loss_curve": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
    }
    trainer.accelerator.wait_for_everyone()

    if trainer.is_world_process_zero():
        reloaded = AutoModelForCausalLM.from_pretrained(training_args.output_dir)
        reloaded_tok = AutoTokenizer.from_pretrained(training_args.output_dir)
        metrics["eval_loss"] = causal_lm_eval_loss(reloaded, eval_ds, training_args.per_device_eval_batch_size)
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        enc = reloaded_tok(data_args.prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = reloaded.generate(
                **enc, max_new_tokens=data_args.max_new_tokens, do_sample=False, pad_token_id=reloaded_tok.pad_token_id
            )
        metrics["sample"] = reloaded_tok.decode(out[0], skip_special_tokens=True)
        with open(os.path.join(training_args.output_dir, "pretrain_results.json"), "w") as fh:
            json.dump(metrics, fh, indent=2)
        print(f"reloaded {type(reloaded).__name__} from {training_args.output_dir}")
        print(f"eval loss {metrics['eval_loss']:.4f}  perplexity {metrics['perplexity']:.2f}")
        print(f"sample: {metrics['sample']!r}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return run(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
