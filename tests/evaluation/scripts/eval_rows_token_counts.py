"""`evaluate()` of a Trainer with hf_ext's `EvalRowsOnceMixin` on 7 rows whose label-token counts differ (row i masks
its first i + 1 labels), eval batch 2: rank 0 writes the eval_loss into OUT/eval_loss.json. `eval_loss(out)` is also
imported by the test to compute the one-process value.

Usage: torchrun --nproc_per_node 2 eval_rows_token_counts.py <output_dir>
"""

import json
import os
import sys


def eval_loss(out: str) -> float:
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator

    from hf_ext.utils import EvalRowsOnceMixin

    class MixinTrainer(EvalRowsOnceMixin, Trainer):
        pass

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(3)
    rows = []
    for i in range(7):
        ids = torch.randint(0, 61, (12,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (i + 1) + ids[i + 1 :], "attention_mask": [1] * 12})
    args = TrainingArguments(output_dir=out, per_device_eval_batch_size=2, use_cpu=True, report_to=[],
                             disable_tqdm=True)  # fmt: skip
    trainer = MixinTrainer(model=model, args=args, eval_dataset=Dataset.from_list(rows),
                           data_collator=default_data_collator)  # fmt: skip
    return trainer.evaluate()["eval_loss"]


if __name__ == "__main__":
    from hf_ext.utils import shutdown_distributed

    loss = eval_loss(sys.argv[1])
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(sys.argv[1], "eval_loss.json"), "w") as fh:
            json.dump({"world_size": int(os.environ["WORLD_SIZE"]), "eval_loss": loss}, fh)
    shutdown_distributed()
