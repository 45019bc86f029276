"""Several 2-rank checks in ONE `torchrun --nproc_per_node 2` launch (each launch costs every rank ~15 s of torch /
transformers / hf_ext imports before its work): each check runs on every rank and is marked on rank 0's
stdout (in_turn.py), so a test reading the launch names the check a failed launch stopped in. It runs the checks of
tests/test_two_rank_checks.py in turn:

1. `rank_fingerprints` of a `fully_shard` (DTensor) model (fsdp_rank_fingerprints.py; OUT_DIR/fsdp_fingerprints.json);
2. a resume between two logs logs the uninterrupted losses (loss_window_two_ranks.py; loss_window_two_ranks.json);
3. every Trainer's `evaluate()` counts each evaluation row once (eval_rows_once.py; eval_rows_once.json);
3b. NeuralGrokTrainer and PrivateTrainer write a whole final model under FSDP2 SHARDED_STATE_DICT
   (whole_model_save_fsdp2_cpu.py; OUT_DIR/whole_model_save.json);
4. the pretrain recipe, plain data-parallel, with the arguments after `--ddp` (its train_loss);
5. the GRAPE recipe (uniform) with accelerate's FSDP2 plugin honoured on CPU (grape_fsdp2_cpu.py; OUT_DIR/grape_fsdp2);
6. the metadata recipe, likewise (metadata_fsdp2_cpu.py; OUT_DIR/metadata_fsdp2);
7. the layer_parallel recipe with --finetune, likewise (layer_parallel_fsdp2_cpu.py; OUT_DIR/layer_parallel_fsdp2);
7b. the layer_parallel recipe under an accelerate FSDP2 environment (layer_parallel_fsdp2_env_cpu.py;
   OUT_DIR/layer_parallel_fsdp2_env);
8. the pretrain recipe with accelerate's FSDP2 plugin honoured on CPU (pretrain_fsdp2_cpu.py) with the arguments after
   `--fsdp2`. A recipe's `finish()` tears the process group down: 4 to 7b run with that teardown deferred
   (`deferred_teardown`: every rank meets and accelerate's state is dropped, as at the end of a launch, but the group
   stays up), 8 last.

Usage: torchrun --nproc_per_node 2 two_rank_checks.py OUT_DIR --ddp <pretrain arguments> --fsdp2 <pretrain arguments>
"""

import sys

from in_turn import deferred_teardown, in_turn


def main(out_dir, ddp_argv, fsdp2_argv):
    import torch.distributed as dist
    from accelerate.state import AcceleratorState
    from eval_rows_once import run_two_ranks as eval_rows_once
    from fsdp_rank_fingerprints import check as fingerprints
    from grape_fsdp2_cpu import run as grape_fsdp2
    from layer_parallel_fsdp2_cpu import run as layer_parallel_fsdp2
    from layer_parallel_fsdp2_env_cpu import run as layer_parallel_fsdp2_env
    from loss_window_two_ranks import check as loss_window
    from metadata_fsdp2_cpu import run as metadata_fsdp2
    from pretrain_fsdp2_cpu import run as pretrain_fsdp2
    from whole_model_save_fsdp2_cpu import run as whole_model_save

    from hf_ext.recipes.pretrain import main as pretrain

    dist.init_process_group("gloo")  # the Trainers' accelerate state then uses it (its backend on CPU too)
    in_turn("fsdp_rank_fingerprints", fingerprints, out_dir)
    in_turn("loss_window", loss_window, out_dir)
    in_turn("eval_rows_once", eval_rows_once, out_dir)
    in_turn("whole_model_save", whole_model_save, out_dir)
    AcceleratorState._reset_state(reset_partial_state=True)  # each recipe starts as in a launch of its own
    with deferred_teardown():
        in_turn("pretrain_ddp", pretrain, ddp_argv)
    with deferred_teardown():
        in_turn("grape_fsdp2", grape_fsdp2, out_dir)
    with deferred_teardown():
        in_turn("metadata_fsdp2", metadata_fsdp2, out_dir)
    with deferred_teardown():
        in_turn("layer_parallel_fsdp2", layer_parallel_fsdp2, out_dir)
    with deferred_teardown():
        in_turn("layer_parallel_fsdp2_env", layer_parallel_fsdp2_env, out_dir)
    in_turn("pretrain_fsdp2", pretrain_fsdp2, fsdp2_argv)  # last: its finish() tears the process group down


if __name__ == "__main__":
    args = sys.argv[1:]
    ddp_at, fsdp2_at = args.index("--ddp"), args.index("--fsdp2")
    main(args[0], args[ddp_at + 1 : fsdp2_at], args[fsdp2_at + 1 :])
