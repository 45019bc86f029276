"""2 gloo ranks: `metadata_invalid` is the total over the ranks, also after resume.

16 documents, 4 with an invalid URL; each rank trains micro-batches of 2, so one optimizer step takes 4 documents and
one epoch of 4 steps takes every document once. The logged value after step 4k is therefore 4k on every rank, and
the value stored in checkpoint-4 is 4. A second run resumes from checkpoint-4 to step 8.

Usage: ddp_invalid_count.py OUT_DIR (writes OUT_DIR/ddp_invalid_count.json on rank 0)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from hf_ext.data import build_tokenizer
from hf_ext.metadata import (
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataTrainer,
    add_context_tokens,
    metadata_template,
)
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json

BAD = {1, 6, 9, 14}


def run(out, tok, data, resume=None):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    )  # fmt: skip
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.0, max_length=32)
    args = TrainingArguments(
        output_dir=out, max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, remove_unused_columns=False,
        report_to="none", logging_steps=1, save_strategy="steps", save_steps=4, use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = MetadataTrainer(
        model=model, args=args, train_dataset=data, data_collator=collator,
        callbacks=[MetadataCooldownCallback(collator, 0.25)],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return {r["step"]: r["metadata_invalid"] for r in trainer.state.log_history if "loss" in r}


def main(out_dir):
    if not dist.is_initialized():  # ddp_checks.py runs it after another check
        dist.init_process_group("gloo")
    tok = build_tokenizer(512)
    add_context_tokens(tok)
    rows = [
        {"text": f"document {i} " + "word " * (i % 5), "url": "http://[::1/x" if i in BAD else f"https://h{i}.org/"}
        for i in range(16)
    ]
    data = Dataset.from_list(rows)
    run_dir = os.path.join(out_dir, "run")
    full = run(run_dir, tok, data)
    dist.barrier()
    with open(os.path.join(run_dir, "checkpoint-4", "metadata_conditioning.json")) as f:
        stored = json.load(f)["metadata_invalid"]
    resumed = run(run_dir, tok, data, resume=os.path.join(run_dir, "checkpoint-4"))
    record = {"world_size": dist.get_world_size(), "full": full, "stored_at_4": stored, "resumed": resumed}
    records = gather_objects(record)
    if dist.get_rank() == 0:
        atomic_write_json(os.path.join(out_dir, "ddp_invalid_count.json"), records)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
