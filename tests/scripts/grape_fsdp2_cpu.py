"""`hf_ext.recipes.grape.main` (`--reweight_method uniform`, which the docs say works with any backend) on 2 gloo ranks
with accelerate's FSDP2 plugin honoured on CPU as it is on GPUs (`_fsdp_on_cpu` of tests/optim/scripts/
scale_out_trainer.py). `run(out_dir)` is a check of two_rank_checks.py's launch (tests/test_two_rank_checks.py): the
recipe must finish on both ranks and write its results (held-out target losses included) and a model
`from_pretrained` loads. Before, the main process evaluated the held-out targets alone on the FSDP-sharded model: its
first forward waited for the other rank's part of the parameter all-gather, while that rank waited at the end of the
run, so the launch hung."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

from hf_ext.recipes.grape import main  # noqa: E402
from hf_ext.utils.distributed import world_size  # noqa: E402


def argv(out_dir):
    return [
        "--vocab_size", "300", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
        "--block_size", "32", "--per_device_train_batch_size", "2", "--max_steps", "2", "--reweight_method", "uniform",
        "--source_domains", "text,numeric", "--target_domains", "t_numeric=numeric", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--plot_file", "", "--seed", "0",
        "--fsdp", "full_shard auto_wrap", "--fsdp_config",
        '{"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": "SHARDED_STATE_DICT"}',
        "--output_dir", os.path.join(out_dir, "grape_fsdp2"),
    ]  # fmt: skip


def run(out_dir):
    """The recipe with the FSDP2 plugin honoured on CPU (its `finish()` tears the process group down, unless deferred)."""
    assert world_size() == 2, f"this check needs exactly 2 ranks, got {world_size()}"
    _fsdp_on_cpu()
    main(argv(out_dir))
