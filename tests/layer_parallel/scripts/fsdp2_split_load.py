"""Two gloo ranks on CPU: FSDP2 (`fully_shard` per layer and the root) of an FP8-converted layer-paired block model,
whose merged pair's branch-wise weights are split into per-branch linears; its state dict keeps the stacked names.

Run by tests/scripts/checks_in_turn.py (for tests/layer_parallel/test_rv19b_fixes.py), or on its own as
`python -m torch.distributed.run --nproc_per_node 2 fsdp2_split_load.py OUT_DIR`.
The reference state dict (the unsharded converted model's) is loaded into the sharded model, whose parameters were
zeroed first, with `torch.distributed.checkpoint.state_dict.set_model_state_dict`: as a full state dict on every rank,
as a full state dict on rank 0 only with `broadcast_from_rank0` (accelerate's FSDP2 FULL_STATE_DICT resume), and as
the sharded state dict `get_model_state_dict` returns. After each, the gathered full state dict must equal the
reference exactly. Rank 0 writes the largest differences to OUT_DIR/fsdp2_split_load.json.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401
from hf_ext.fp8 import convert
from hf_ext.models.layer_parallel import convert_to_layer_parallel
from hf_ext.utils.io import atomic_write_json

_SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2)  # fmt: skip


def _build():
    torch.manual_seed(0)
    paired = convert_to_layer_parallel(LlamaForCausalLM(LlamaConfig(**_SHAPE)), start=1, end=3, mode="block")
    return convert(paired, "torchao")


def _full(model):
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}


def _zero(model):
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()


def main(out_dir: str) -> None:
    if not dist.is_initialized():  # checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    assert world_size == 2, world_size
    reference = _build().state_dict()
    assert "model.layers.1.mlp.gate_weight" in reference and "model.layers.1.self_attn.o_proj.weight" in reference
    model = _build()
    assert model.model.layers[1].mlp.gate_weight is None  # split into per-branch linears
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = {k: v.detach().clone() for k, v in get_model_state_dict(model).items()}  # DTensors, stacked ones too
    max_diff = {}
    cases = {
        "full": ({k: v.clone() for k, v in reference.items()}, StateDictOptions(full_state_dict=True)),
        "full_broadcast_from_rank0": (
            {k: v.clone() for k, v in reference.items()} if rank == 0 else {},
            StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
        ),
        "sharded": (sharded, StateDictOptions()),
    }
    for name, (state, options) in cases.items():
        _zero(model)
        assert max(v.abs().max().item() for v in _full(model).values()) == 0
        set_model_state_dict(model, state, options=options)
        loaded = _full(model)
        assert set(loaded) == set(reference), sorted(set(loaded) ^ set(reference))[:4]
        max_diff[name] = max((loaded[k].float() - reference[k].float()).abs().max().item() for k in reference)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()  # the loaded sharded model still trains
    if rank == 0:
        atomic_write_json(
            os.path.join(out_dir, "fsdp2_split_load.json"), {"world_size": world_size, "max_diff": max_diff}
        )
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
    dist.destroy_process_group()
