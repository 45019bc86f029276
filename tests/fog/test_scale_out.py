"""Issue 15 item 8: FOG trains under FSDP2 and DDP on 2 gloo ranks exactly like one process on the whole batch, and
under FSDP2 with torchao FP8 (emulated GEMMs on CPU) all-gathering its sharded weights in FP8."""

from __future__ import annotations

import json

import pytest


@pytest.mark.distributed
def test_fsdp2_ddp_and_fp8_all_gather_on_two_ranks(fog_two_ranks):
    folder, _ = fog_two_ranks("scale_out")  # scripts/scale_out.py, in the launch shared with the FOG TP check
    rank0, rank1 = json.loads((folder / "scale_out.json").read_text())
    for r in (rank0, rank1):
        assert r["fsdp2"]["param_type"] == "DTensor" and r["fsdp2"]["max_diff_vs_single"] < 1e-5
        assert r["ddp"]["wrapper"] == "DistributedDataParallel" and r["ddp"]["max_diff_vs_single"] < 1e-5
        fp8 = r["fsdp2_fp8"]
        assert fp8["converted"] == 12 and fp8["weight_local_type"] == "WeightWithDynamicFloat8CastTensor"
        assert all(0 < loss < 10 for loss in fp8["losses"]) and fp8["max_diff_vs_single"] < 0.2
    assert rank0["fsdp2_fp8"]["max_diff_vs_single"] == rank1["fsdp2_fp8"]["max_diff_vs_single"]


def test_fsdp_fp8_all_gather_needs_tensorwise():
    from hf_ext.fp8 import torchao_config

    assert torchao_config("tensorwise", fsdp_float8_all_gather=True).enable_fsdp_float8_all_gather
    with pytest.raises(ValueError, match="tensorwise"):
        torchao_config("rowwise", fsdp_float8_all_gather=True)
