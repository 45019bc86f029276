"""`hf_ext.recipes.layer_parallel.main` with `--finetune` on 2 gloo ranks with accelerate's FSDP2 plugin honoured on
CPU as it is on GPUs (`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). `run(out_dir)` is a check of
two_rank_checks.py's launch (tests/test_two_rank_checks.py): the recipe must finish on both ranks, write its results
and a model `from_pretrained` loads. Before, after fine-tuning the paired layers under FSDP the main process
evaluated, saved and reloaded the sharded model alone: its first forward waited in the parameter all-gather for the
other rank, which waited at the end of the run, so the launch hung."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.recipes.layer_parallel import main  # noqa: E402
from hf_ext.utils.distributed import world_size  # noqa: E402


def argv(out_dir):
    return [
        "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
        "--num_key_value_heads", "1", "--vocab_size", "512", "--per_device_train_batch_size", "4", "--block_size",
        "32", "--pretrain_steps", "8", "--max_steps", "2", "--pair_counts", "1", "--max_ppl_increase", "100",
        "--max_eval_blocks", "5", "--per_device_eval_batch_size", "2", "--use_cpu", "true", "--report_to", "none",
        "--disable_tqdm", "true", "--finetune", "true", "--seed", "0", "--logging_steps", "1",
        "--fsdp", "full_shard auto_wrap", "--fsdp_config", '{"fsdp_version": 2}',
        "--output_dir", os.path.join(out_dir, "layer_parallel_fsdp2"),
    ]  # fmt: skip


def run(out_dir):
    """The recipe with the FSDP2 plugin honoured on CPU (its `finish()` tears the process group down, unless deferred)."""
    assert world_size() == 2, f"this check needs exactly 2 ranks, got {world_size()}"
    _fsdp_on_cpu()
    main(argv(out_dir))
