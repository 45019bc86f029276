"""`hf_ext.recipes.layer_parallel.main` (pre-training its small source model, sweep, conversion) on 2 gloo ranks with
FSDP2 set the way `accelerate launch --config_file <an FSDP2 config>` sets it: in the environment
(`ACCELERATE_USE_FSDP`, `FSDP_*`; SHARDED_STATE_DICT), not in the recipe's flags, honoured on CPU as on GPUs
(`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). `run(out_dir)` is a check of two_rank_checks.py's launch
(tests/test_two_rank_checks.py), which runs the same arguments (OUT_DIR/layer_parallel_fsdp2_env/argv.json) in one
process at twice the per-device batch. The pre-training Trainer's own arguments name no FSDP, so accelerate's
environment sharded its model: the sweep got the sharded model and stopped with a TypeError ("lm_head is
FSDPLinear"), and source/ held no weights."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.utils.distributed import world_size  # noqa: E402

ENV = {
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
}  # fmt: skip
# without the batch size and the output folder
ARGS = [
    "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
    "--num_key_value_heads", "1", "--vocab_size", "512", "--block_size", "32", "--pretrain_steps", "4",
    "--pair_counts", "1", "--max_ppl_increase", "100", "--max_eval_blocks", "5", "--per_device_eval_batch_size", "2",
    "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
]  # fmt: skip


def run(out_dir):
    """The recipe under the FSDP2 environment (in_turn restores the environment afterwards) at per-device batch 4;
    OUT_DIR/layer_parallel_fsdp2_env holds its run (two/) and the shared arguments (argv.json)."""
    assert world_size() == 2, f"this check needs exactly 2 ranks, got {world_size()}"
    from hf_ext.recipes.layer_parallel import main
    from hf_ext.utils.io import atomic_write_json

    folder = os.path.join(out_dir, "layer_parallel_fsdp2_env")
    os.makedirs(folder, exist_ok=True)
    atomic_write_json(os.path.join(folder, "argv.json"), ARGS)
    os.environ.update(ENV)
    _fsdp_on_cpu()
    main([*ARGS, "--per_device_train_batch_size", "4", "--output_dir", os.path.join(folder, "two")])


if __name__ == "__main__":
    run(sys.argv[1])
