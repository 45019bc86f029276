"""2 gloo ranks, an `IterableDataset`: the MeCo cooldown switches after the same optimizer step as in one process, and
`metadata_invalid` is the one-process count, whether accelerate dispatches batches or not, also after resume.

For an `IterableDataset` accelerate dispatches batches by default: only the main process iterates the loader, its
collator builds both ranks' micro-batches of every micro-step (the other rank's builds none). The callback used to
count one batch per micro-step, so the cooldown started after about switch_step / 2 and half the invalid examples
were never counted. 400 documents read in order, every 4th URL invalid; 8 optimizer steps of 2 accumulated
micro-steps of 4 documents (2 per rank), cooldown 0.25: switch after step 6, 16 invalid URLs in the 64 trained documents.

Runs (each records, per micro-batch seen by `training_step`, the optimizer step and whether a row has metadata):
  dispatch   - the default (accelerate's `DataLoaderDispatcher`), saving checkpoint-4 (before the switch);
  resumed    - the same run resumed from checkpoint-4;
  no_dispatch - `accelerator_config={"dispatch_batches": False}`: every rank collates its own micro-batches;
  split      - dispatching with `split_batches=True`: the main process collates one batch of 4 and splits it;
  packed     - dispatching, the collator packing with `document_attention` (batches carry `use_cache=False`).

Usage: ddp_iterable_cooldown.py OUT_DIR (2 ranks; writes OUT_DIR/ddp_iterable_cooldown.json on rank 0). `run(...)`
is also called in one process by the test, for the reference."""

import json
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from hf_ext.data import build_tokenizer
from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    MetadataCooldownCallback,
    MetadataTrainer,
    add_context_tokens,
    metadata_template,
)

MAX_STEPS = 8
GRAD_ACCUM = 2
DOCUMENTS_PER_MICRO_STEP = 4


def documents():
    rows = [
        {"text": f"document {i} alpha", "url": "http://[::1/x" if i % 4 == 1 else f"https://h{i % 10}.org/"}
        for i in range(400)
    ]
    return Dataset.from_list(rows).to_iterable_dataset()  # read in order


def run(out, tok, world_size=1, resume=None, save_steps=None, packed=False, **accelerator_config):
    """Train `MAX_STEPS` steps; returns the micro-batch record, the logged values, the train loader's class and the
    `use_cache` values the model was called with. `packed`: the collator packs into blocks of 32 tokens with
    `document_attention` (its batches carry `use_cache=False`, a Python bool, which accelerate's dispatching cannot
    concatenate: that run failed at its first step until `MetadataTrainer` left it out of the loaders' batches)."""
    begin, end = tok.convert_tokens_to_ids(CONTEXT_BEGIN), tok.convert_tokens_to_ids(CONTEXT_END)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    )  # fmt: skip
    # fixed width: a dispatched micro-step concatenates the main process's batches, which must have one shape
    collator = MetadataCollator(
        tok, metadata_template("url_host"), metadata_dropout=0.0,
        **({"block_size": 32} if packed else {"max_length": 32, "pad_to_multiple_of": 32}),
    )  # fmt: skip
    per_device = DOCUMENTS_PER_MICRO_STEP if accelerator_config.get("split_batches") else 4 // world_size
    args = TrainingArguments(
        output_dir=out, max_steps=MAX_STEPS, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=GRAD_ACCUM, learning_rate=1e-3, remove_unused_columns=False, report_to="none",
        logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, use_cpu=True,
        seed=0, disable_tqdm=True, accelerator_config=accelerator_config or None,
    )  # fmt: skip
    micro_batches, use_cache = [], set()

    class Recording(MetadataTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            ids = inputs["input_ids"]
            rows, cols = (ids == begin).nonzero(as_tuple=True)  # a row has metadata when its context pair is not empty
            micro_batches.append([self.state.global_step + 1, bool((ids[rows, cols + 1] != end).any())])
            return super().training_step(model, inputs, *args, **kwargs)

        def compute_loss(self, model, inputs, *args, **kwargs):
            use_cache.add(repr(inputs.get("use_cache")))  # what the model is called with
            return super().compute_loss(model, inputs, *args, **kwargs)

    callback = MetadataCooldownCallback(collator, 0.25)
    trainer = Recording(
        model=model, args=args, train_dataset=documents(), data_collator=collator, callbacks=[callback]
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return {
        "loader": type(trainer.callback_handler.train_dataloader).__name__,
        "switch_step": callback.switch_step,
        "use_cache": sorted(use_cache),
        "micro_batches": micro_batches,
        "logged": {
            str(r["step"]): [r["metadata_conditioning"], r["metadata_invalid"]]
            for r in trainer.state.log_history
            if "loss" in r
        },
    }


def main(out_dir):
    from hf_ext.utils.distributed import gather_objects
    from hf_ext.utils.io import atomic_write_json

    if not dist.is_initialized():  # ddp_checks.py runs it after another check
        dist.init_process_group("gloo")
    world_size = dist.get_world_size()
    assert world_size == 2, world_size
    torch.set_num_threads(1)
    tok = build_tokenizer(512)
    add_context_tokens(tok)
    run_dir = os.path.join(out_dir, "dispatch")
    record = {"world_size": world_size, "dispatch": run(run_dir, tok, world_size, save_steps=4)}
    dist.barrier()
    with open(os.path.join(run_dir, "checkpoint-4", "metadata_conditioning.json")) as f:
        record["stored_at_4"] = json.load(f)
    record["resumed"] = run(run_dir, tok, world_size, resume=os.path.join(run_dir, "checkpoint-4"))
    record["no_dispatch"] = run(os.path.join(out_dir, "no_dispatch"), tok, world_size, dispatch_batches=False)
    record["split"] = run(os.path.join(out_dir, "split"), tok, world_size, split_batches=True)
    record["packed"] = run(os.path.join(out_dir, "packed"), tok, world_size, packed=True)  # dispatched
    records = gather_objects(record)
    if dist.get_rank() == 0:
        atomic_write_json(os.path.join(out_dir, "ddp_iterable_cooldown.json"), records)


if __name__ == "__main__":
    main(sys.argv[1])
    from hf_ext.utils.distributed import shutdown_distributed

    shutdown_distributed()
