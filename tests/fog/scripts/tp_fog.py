"""Two gloo ranks on CPU: FOG loaded with transformers' own tensor parallelism.

Run by tests/scripts/checks_in_turn.py (for tests/fog/test_tensor_parallel.py), or on its own as
`python -m torch.distributed.run --nproc_per_node 2 tp_fog.py OUT_DIR`.
Rank 0 builds small FOG models (the FOG recipe with xIELU, the Llama-style baseline, Smooth-SwiGLU in both forms, GQA,
DyT QK norm, tied embeddings) and saves them with single-process logits, loss, gradients and greedy generations; every
rank then loads each with `distributed_config=DistributedConfig(tp_size=2)` and checks that the projections are split,
that logits and loss match and that greedy generation (dynamic and static cache) gives the same tokens; then it checks
the row-wise gradient shards. Rank 0 writes the per-model max differences to OUT_DIR/tp_fog_result.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, DistributedConfig

import hf_ext  # noqa: F401  (registers the fog model type)
from hf_ext.models.fog import FogConfig, FogForCausalLM

SIZE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4)
MODELS = {
    "fog_xielu": FogConfig.fog(**SIZE),
    "llama_baseline_swiglu": FogConfig.llama_baseline(**SIZE),
    "smooth_swiglu": FogConfig.fog(**SIZE, hidden_act="smooth_swiglu"),
    "smooth_swiglu_product": FogConfig.fog(**SIZE, hidden_act="smooth_swiglu_product"),
    "gqa_dyt_tied": FogConfig.fog(**SIZE, num_key_value_heads=2, qk_norm="dyt", tie_word_embeddings=True),
}
PROMPT = torch.tensor([[5, 17, 3, 42, 8, 61], [9, 2, 33, 71, 14, 6]])
LABELS = torch.roll(PROMPT, -1, dims=1)
PROMPT2 = torch.flip(PROMPT, dims=[1])
LABELS2 = torch.roll(PROMPT2, -1, dims=1)


def reference(name: str, cfg: FogConfig, path: str) -> dict:
    torch.manual_seed(0)
    model = FogForCausalLM(cfg)
    # Spread the activations so that Smooth-SwiGLU's per-token max differs between the two halves of the neurons.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(3.0)
    model.save_pretrained(path)
    model.eval()
    out = model(PROMPT, labels=LABELS)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model(PROMPT2, labels=LABELS2).loss.backward()  # gradient accumulation: a second micro-batch, no zero_grad
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        greedy = model.generate(PROMPT, max_new_tokens=8, do_sample=False)
        static = model.generate(PROMPT, max_new_tokens=8, do_sample=False, cache_implementation="static")
    return dict(
        logits=out.logits.detach(),
        loss=out.loss.detach(),
        grads=grads,
        accumulated=accumulated,
        greedy=greedy,
        static=static,
    )


def shard_diff(model, reference_grads: dict, rank: int, world: int) -> float:
    """Largest difference between each rank's gradient shard and the slice of the single-process gradient."""
    worst = 0.0
    for n, p in model.named_parameters():
        if n not in reference_grads:
            continue
        local = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        full = reference_grads[n]
        for dim in range(full.ndim):
            if local.shape[dim] != full.shape[dim]:
                full = full.narrow(dim, rank * -(-full.shape[dim] // world), local.shape[dim])
                break
        worst = max(worst, (local - full).abs().max().item())
    return worst


def main(out_dir: str) -> None:
    if not dist.is_initialized():  # tests/scripts/checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    paths = {name: os.path.join(out_dir, name) for name in MODELS}
    refs = {name: reference(name, cfg, paths[name]) if rank == 0 else None for name, cfg in MODELS.items()}
    holder = [refs]
    dist.broadcast_object_list(holder, src=0)
    refs = holder[0]
    result = {}
    for name in MODELS:
        ref = refs[name]
        model = AutoModelForCausalLM.from_pretrained(paths[name], distributed_config=DistributedConfig(tp_size=2))
        assert isinstance(model, FogForCausalLM)
        layer = model.model.layers[0]
        for proj, dim in (("self_attn.q_proj", 0), ("self_attn.o_proj", 1), ("mlp.up_proj", 0), ("mlp.down_proj", 1)):
            weight = layer.get_submodule(proj).weight
            assert isinstance(weight, DTensor), (name, proj, type(weight))
            assert weight.to_local().shape[dim] * 2 == weight.shape[dim], (name, proj, weight.to_local().shape)
        model.eval()
        out = model(PROMPT, labels=LABELS)
        logits_diff = (out.logits.detach() - ref["logits"]).abs().max().item()
        loss_diff = (out.loss.detach() - ref["loss"]).abs().item()
        assert logits_diff < 1e-4, (name, logits_diff)
        assert loss_diff < 1e-5, (name, loss_diff)
        out.loss.backward()
        grad_diff = shard_diff(model, ref["grads"], rank, world)
        assert grad_diff < 1e-4, (name, grad_diff)
        # Gradient accumulation: a second micro-batch adds its own gradient once (replicated QK-norm / xIELU
        # parameters included).
        model(PROMPT2, labels=LABELS2).loss.backward()
        accumulated_diff = shard_diff(model, ref["accumulated"], rank, world)
        assert accumulated_diff < 1e-4, (name, accumulated_diff)
        with torch.no_grad():
            greedy = model.generate(PROMPT, max_new_tokens=8, do_sample=False)
            static = model.generate(PROMPT, max_new_tokens=8, do_sample=False, cache_implementation="static")
        assert torch.equal(greedy, ref["greedy"]), (name, greedy, ref["greedy"])
        assert torch.equal(static, ref["static"]), (name, static, ref["static"])
        result[name] = dict(logits=logits_diff, loss=loss_diff, grads=grad_diff, accumulated_grads=accumulated_diff)
    if rank == 0:
        tmp = os.path.join(out_dir, "tp_fog_result.json.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp, os.path.join(out_dir, "tp_fog_result.json"))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
    dist.destroy_process_group()
