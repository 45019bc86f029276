"""`hf_ext.recipes.layer_parallel.main` (pre-training its small source model, sweep, conversion) on 2 gloo ranks with
FSDP2 set the way `accelerate launch --config_file <an FSDP2 config>` sets it: in the environment
(`ACCELERATE_USE_FSDP`, `FSDP_*`; SHARDED_STATE_DICT), not in the recipe's flags, honoured on CPU as on GPUs
(`_fsdp_on_cpu` of tests/optim/scripts/scale_out_trainer.py). The pre-training Trainer's own arguments name no FSDP, so
accelerate's environment sharded its model: the sweep got the sharded model and stopped with a TypeError
("lm_head is FSDPLinear"), and source/ held no weights.

Usage: torchrun --nproc_per_node 2 layer_parallel_fsdp2_env_cpu.py <layer_parallel arguments>"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optim", "scripts"))
from scale_out_trainer import _fsdp_on_cpu  # noqa: E402

ENV = {
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
}  # fmt: skip

if __name__ == "__main__":
    os.environ.update(ENV)
    _fsdp_on_cpu()
    from hf_ext.recipes.layer_parallel import main

    main(sys.argv[1:])
