"""`hf_ext.recipes.metadata_pretrain.main` on 2 gloo ranks with accelerate's FSDP2 plugin honoured on CPU as it is on
GPUs (`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). `run(out_dir)` is a check of two_rank_checks.py's
launch (tests/test_two_rank_checks.py): the recipe must finish on both ranks and write its results. Before, the main
process computed the final document losses (and ran lm-eval and generation) alone on the FSDP-sharded model: its
first forward's parameter all-gather met the other rank's next collective and gloo aborted the launch ("Received
data size doesn't match expected size")."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.recipes.metadata_pretrain import main  # noqa: E402
from hf_ext.utils.distributed import world_size  # noqa: E402


def argv(out_dir):
    return [
        "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
        "--block_size", "64", "--per_device_train_batch_size", "2", "--max_eval_docs", "4", "--doc_eval_steps", "2",
        "--logging_steps", "2", "--guidance_max_new_tokens", "2", "--disable_tqdm", "true",
        "--vocab_size", "512", "--max_steps", "2", "--use_cpu", "true", "--report_to", "none",
        "--fsdp", "full_shard auto_wrap", "--fsdp_config",
        '{"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["FogDecoderLayer"], "state_dict_type": "SHARDED_STATE_DICT"}',
        "--output_dir", os.path.join(out_dir, "metadata_fsdp2"),
    ]  # fmt: skip


def run(out_dir):
    """The recipe with the FSDP2 plugin honoured on CPU (its `finish()` tears the process group down, unless deferred)."""
    assert world_size() == 2, f"this check needs exactly 2 ranks, got {world_size()}"
    _fsdp_on_cpu()
    main(argv(out_dir))
