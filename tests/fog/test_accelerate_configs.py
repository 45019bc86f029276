"""Issue 15 item 8: the multi-GPU / multi-node accelerate configs for FOG load with accelerate and name real modules."""

import os

import pytest


@pytest.mark.parametrize(
    "name, kind, processes",
    [("8gpu_fsdp2_fp8", "FSDP", 8), ("8gpu_ddp_fp8", "MULTI_GPU", 8), ("multinode_fsdp2_fp8", "FSDP", 32)],
)
def test_scale_out_configs_load(repo_root, name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    import hf_ext.models.fog.modeling_fog as fog

    cfg = load_config_from_file(os.path.join(repo_root, "scripts", "accelerate", f"{name}.yaml"))
    assert cfg.distributed_type.value == kind and cfg.num_processes == processes and cfg.mixed_precision == "fp8"
    assert cfg.num_processes % cfg.num_machines == 0
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert hasattr(fog, cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])
