"""Two gloo ranks on CPU: FOG loaded with transformers' tensor parallelism, then converted to torchao FP8.

Run by tests/scripts/checks_in_turn.py (for tests/fp8/test_fp8_tensor_parallel.py), or on its own as
`python -m torch.distributed.run --nproc_per_node 2 tp_fp8.py OUT_DIR`.
Rank 0 saves small FOG models (the recipe with xIELU, Smooth-SwiGLU, GQA with tied embeddings); every rank loads each
twice: unsharded and converted with `hf_ext.fp8.convert(model, "torchao")` (the reference), and with
`DistributedConfig(tp_size=2)`, then converted the same way. The sharded FP8 model must compute what the unsharded FP8
model does: logits, loss and every gradient (gathered from its shards), and again after one SGD step on both.
Backends and recipes that cannot run on shards are refused before anything changes. Last, the kurtosis monitor
reports the same statistics on the TP=2 model as on the unsharded one. Rank 0 writes the largest
differences to OUT_DIR/tp_fp8_result.json.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import DistributedConfig

import hf_ext  # noqa: F401  (registers the fog model type)
from hf_ext.fp8 import convert
from hf_ext.fp8.convert import fp8_converted_modules, fp8_target_modules
from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.utils.io import atomic_write_json

SIZE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
MODELS = {
    "fog_xielu": FogConfig.fog(**SIZE),
    "smooth_swiglu": FogConfig.fog(**SIZE, hidden_act="smooth_swiglu"),
    "gqa_tied": FogConfig.fog(**SIZE, num_key_value_heads=2, tie_word_embeddings=True),
}
IDS = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def loss_and_grads(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(IDS, labels=IDS)
    out.loss.backward()
    grads = {n: full(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def compare(name: str, sharded: tuple, reference: tuple) -> dict[str, float]:
    logits, loss, grads = sharded
    ref_logits, ref_loss, ref_grads = reference
    assert grads.keys() == ref_grads.keys(), name
    grad_rel = max(((g - ref_grads[k]).abs().max() / ref_grads[k].abs().max().clamp_min(1e-12)).item()
                   for k, g in grads.items())  # fmt: skip
    diffs = dict(
        logits=(logits - ref_logits).abs().max().item(),
        loss=(loss - ref_loss).abs().item(),
        grads_rel=grad_rel,
    )
    assert diffs["logits"] < 1e-5 and diffs["loss"] < 1e-5 and diffs["grads_rel"] < 1e-4, (name, diffs)
    return diffs


def monitor_check(path: str) -> dict[str, float]:
    """The kurtosis monitor on the TP=2 model reports what it reports on the unsharded model: per-sample sums, amax and
    counts of the sharded sites are reduced over the group before any ratio. Two monitored forwards each, so the
    saturation statistic (against the previous amax) is exercised too."""
    from hf_ext.fp8 import KurtosisMonitor

    stats = []
    for kwargs in ({}, {"distributed_config": DistributedConfig(tp_size=2)}):
        model = FogForCausalLM.from_pretrained(path, **kwargs).eval()
        monitor = KurtosisMonitor(model)  # pools over both ranks too, which see the same batch
        collected = []
        for scale in (1.0, 1.5):
            with torch.no_grad(), monitor.active():
                model(inputs_embeds=model.get_input_embeddings()(IDS) * scale)
            collected.append(monitor.collect())
        stats.append(collected)
    (ref_a, ref_b), (tp_a, tp_b) = stats
    assert set(tp_a) == set(ref_a) and len(ref_a) > 50, sorted(set(tp_a) ^ set(ref_a))
    assert any(k.startswith("mlp_post_act/kurtosis/layer_") for k in ref_a), sorted(ref_a)
    worst = {}
    for ref, got in ((ref_a, tp_a), (ref_b, tp_b)):
        for key, value in ref.items():
            stat = key.split("/")[1]
            diff = abs(got[key] - value) / max(abs(value), 1e-6)
            worst[stat] = max(worst.get(stat, 0.0), diff)
            assert diff < 1e-4, (key, got[key], value)
    assert ref_b["mlp_post_act/saturation/avg"] > 0, ref_b  # the larger second input exceeds the previous amax
    return worst


def layer_parallel_block_check(out_dir: str) -> float:
    """A layer-paired model with merged "block" pairs under TP: their projections keep partial sums for the pair's
    single all-reduce (styles `layer_parallel_*`), which FP8 on shards does not support. `convert` refuses before
    changing anything; with those projections skipped, the rest runs in FP8 as in the unsharded model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    path = os.path.join(out_dir, "lp_block")
    if dist.get_rank() == 0:
        torch.manual_seed(0)
        source = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                              num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
        convert_to_layer_parallel(source, start=1, end=3, mode="block").save_pretrained(path)
    dist.barrier()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, distributed_config=DistributedConfig(tp_size=2))
    try:
        convert(model, "torchao")
    except ValueError as err:
        assert "layer_parallel_rowwise" in str(err) and "skip_modules" in str(err), err
    else:
        raise AssertionError("convert accepted a block pair's branch-wise projection under TP")
    assert not fp8_converted_modules(model)
    from hf_ext.fp8 import KurtosisMonitor

    monitor = KurtosisMonitor(model, layers=list(model.model.layers))
    try:  # a block pair's MLP output is a partial sum per rank: the monitor says so instead of misreporting it
        monitor.enable()
    except RuntimeError as err:
        assert "block" in str(err) and "tensor parallelism" in str(err), err
    else:
        raise AssertionError("the kurtosis monitor accepted a block pair under TP")
    try:  # the MLP's gate / up weights, split by branch over the ranks, cannot be split into per-branch linears
        convert(model, "torchao", skip_modules=["o_proj", "down_proj"])
    except ValueError as err:
        assert "layer_parallel_block" in str(err) and "gate_branches" in str(err), err
    else:
        raise AssertionError("convert accepted a block pair's sharded gate / up weights under TP")
    assert not fp8_converted_modules(model)
    skip = ["o_proj", "down_proj", "gate_branches", "up_branches"]
    convert(model, "torchao", skip_modules=skip)
    reference = convert(AutoModelForCausalLM.from_pretrained(path), "torchao", skip_modules=skip)
    assert sorted(fp8_converted_modules(model)) == sorted(fp8_converted_modules(reference))
    logits, ref_logits = model(IDS, labels=IDS).logits, reference(IDS, labels=IDS).logits
    diff = (logits - ref_logits).abs().max().item()
    assert diff < 1e-5, diff
    return diff


def main(out_dir: str) -> None:
    if not dist.is_initialized():  # tests/scripts/checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    if rank == 0:
        for name, cfg in MODELS.items():
            torch.manual_seed(0)
            FogForCausalLM(cfg).save_pretrained(os.path.join(out_dir, name))
    dist.barrier()
    result = {}
    for name in MODELS:
        path = os.path.join(out_dir, name)
        reference = convert(FogForCausalLM.from_pretrained(path), "torchao")
        model = FogForCausalLM.from_pretrained(path, distributed_config=DistributedConfig(tp_size=2))
        targets = fp8_target_modules(model)

        # Backends / recipes that cannot run on shards: refused, nothing converted.
        for kwargs in (dict(backend="emulated"), dict(backend="torchao", recipe="rowwise")):
            try:
                convert(model, **kwargs)
            except ValueError as err:
                assert "tensor parallelism" in str(err) and "recipe='tensorwise'" in str(err), err
            else:
                raise AssertionError(f"convert({kwargs}) accepted a tensor-parallel model")
            assert not fp8_converted_modules(model), kwargs

        convert(model, "torchao")
        assert sorted(fp8_converted_modules(model)) == sorted(targets), name
        up = model.model.layers[0].mlp.up_proj
        assert isinstance(up.weight, DTensor) and up.weight.to_local().shape[0] * 2 == up.weight.shape[0], name
        assert type(up).__name__ == "Float8Linear", type(up)

        diffs = {"step0": compare(f"{name} step 0", loss_and_grads(model), loss_and_grads(reference))}
        # Without gradients transformers runs the shards on local tensors, so each shard gets its own FP8 scale: not
        # bit-equal to the unsharded FP8 model, but no further from FP32 than it is.
        with torch.no_grad():
            high = FogForCausalLM.from_pretrained(path)(IDS).logits
            local, unsharded = model(IDS).logits, reference(IDS).logits
        diffs["no_grad"] = {
            "tp_fp8_vs_fp8": (local - unsharded).abs().max().item(),
            "tp_fp8_vs_fp32": (local - high).abs().max().item(),
            "fp8_vs_fp32": (unsharded - high).abs().max().item(),
        }
        assert diffs["no_grad"]["tp_fp8_vs_fp32"] < 2 * diffs["no_grad"]["fp8_vs_fp32"], (name, diffs["no_grad"])
        # One SGD step on each: the sharded parameters move as the unsharded ones do. (SGD, not Adam: Adam's first
        # step is about lr * sign(grad), which turns 1e-7 differences of near-zero gradients into lr-sized ones.)
        for m in (model, reference):
            torch.optim.SGD(m.parameters(), lr=0.5).step()
        diffs["step1"] = compare(f"{name} step 1", loss_and_grads(model), loss_and_grads(reference))
        with torch.no_grad():
            tokens = model.generate(IDS[:, :6], max_new_tokens=4, do_sample=False)
        assert tokens.shape == (2, 10), tokens.shape
        result[name] = diffs
    result["monitor"] = monitor_check(os.path.join(out_dir, "smooth_swiglu"))
    result["layer_parallel_block"] = layer_parallel_block_check(out_dir)
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "tp_fp8_result.json"), result)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
    dist.destroy_process_group()
