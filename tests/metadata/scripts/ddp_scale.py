"""2 gloo ranks, a map-style dataset: `MetadataTrainer` with a `MetadataCooldownCallback` on 2 ranks x 2 documents
trains what one process trains on 4 (the test runs that one, `run(..., batch_size=4)`), and a 2-rank checkpoint
resumes exactly on 2 ranks and on 1.

32 documents of 2 to 20 words (so the ranks' micro-batches hold different token counts, and the context prefixes
kept out of the loss differ per document), `url_host` metadata with `metadata_dropout=0.3`, 6 steps, the cooldown
(fraction 0.5) after step 3, checkpoint-3. Runs, each into `OUT_DIR/ddp_scale/<name>`:
  padded / packed - right-padded rows; rows packed with `document_attention` (`block_size` 48);
  resumed         - `padded` resumed on 2 ranks from a copy of its checkpoint-3 (`padded_checkpoint-3`, which the test
                    also resumes in one process at 4 documents a step).
Each rank writes `params_rank<rank>.pt` (every parameter, flattened, in order) and `logs_rank<rank>.json` (the
logged `loss`, `metadata_conditioning` and `metadata_invalid` per step) into each run's folder.

Usage: ddp_scale.py OUT_DIR (2 ranks); `run(...)` is also called in one process by the test."""

import os
import shutil
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
from hf_ext.utils.distributed import shutdown_distributed
from hf_ext.utils.io import atomic_write_json

MAX_STEPS = 6


def documents():
    return Dataset.from_list(
        [{"text": f"document {i} " + "word alpha beta " * (i % 7), "url": f"https://host{i % 5}.example{i}.org/p/{i}"}
         for i in range(32)]
    )  # fmt: skip


def run(out, tok, batch_size, packed=False, resume=None):
    """Train `MAX_STEPS` steps at `batch_size` documents per process (resuming from `resume`); writes this process's
    `params_rank<rank>.pt` and `logs_rank<rank>.json` into `out` and returns `(parameters, logs)`."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    )  # fmt: skip
    rows = {"block_size": 48, "document_attention": True} if packed else {"max_length": 48}
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.3, **rows)
    args = TrainingArguments(
        output_dir=out, max_steps=MAX_STEPS, per_device_train_batch_size=batch_size, learning_rate=1e-2,
        lr_scheduler_type="constant", remove_unused_columns=False, report_to="none", logging_steps=1,
        save_strategy="steps", save_steps=3, use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = MetadataTrainer(
        model=model, args=args, train_dataset=documents(), data_collator=collator,
        callbacks=[MetadataCooldownCallback(collator, 0.5)],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    keys = ("loss", "metadata_conditioning", "metadata_invalid")
    logs = {r["step"]: [r.get(k) for k in keys] for r in trainer.state.log_history if "loss" in r}
    rank = trainer.args.process_index
    torch.save(params, os.path.join(out, f"params_rank{rank}.pt"))
    atomic_write_json(os.path.join(out, f"logs_rank{rank}.json"), logs)
    return params, logs


def main(out_dir):
    if not dist.is_initialized():  # ddp_checks.py runs it after other checks
        dist.init_process_group("gloo")
    assert dist.get_world_size() == 2, "expected two ranks (torchrun --nproc_per_node 2)"
    tok = build_tokenizer(512)
    add_context_tokens(tok)
    out = os.path.join(out_dir, "ddp_scale")
    run(os.path.join(out, "padded"), tok, 2)
    if dist.get_rank() == 0:  # a copy: the resumed run saves checkpoint-6 next to it
        shutil.copytree(os.path.join(out, "padded", "checkpoint-3"), os.path.join(out, "padded_checkpoint-3"))
    dist.barrier()
    run(os.path.join(out, "resumed"), tok, 2, resume=os.path.join(out, "padded_checkpoint-3"))
    run(os.path.join(out, "packed"), tok, 2, packed=True)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
