"""Two gloo ranks on CPU: layer-paired models loaded with transformers' own tensor parallelism.

Run by tests/scripts/checks_in_turn.py (for tests/layer_parallel/test_tensor_parallel.py), or on its own as
`python -m torch.distributed.run --nproc_per_node 2 tp_layer_parallel.py OUT_DIR`.
Rank 0 converts small Llama models (MHA and GQA) and saves them with single-process reference logits and greedy
generations; every rank then loads them with `distributed_config=DistributedConfig(tp_plan="auto")`, checks that
each rank holds exactly one source layer of every merged pair, that logits and generations equal the reference, and
counts the all-reduces of one forward; last, `scripts/bench_layer_parallel.py --tiny --tp 2` runs on the same ranks.
Rank 0 writes the measurements to OUT_DIR/tp_result.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor.debug import CommDebugMode
from transformers import AutoModelForCausalLM, DistributedConfig, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer_parallel model type)
from hf_ext.models.layer_parallel import convert_to_layer_parallel
from hf_ext.models.layer_parallel.modeling_layer_parallel import merge_pair_state

NUM_LAYERS, PAIR = 6, (2, 4)  # layers (2, 3) paired
MODELS = {  # name -> (num_key_value_heads, conversion kwargs[, source config overrides])
    "mha_paired": (4, dict(start=PAIR[0], end=PAIR[1])),
    "gqa_paired": (2, dict(start=PAIR[0], end=PAIR[1])),
    "gqa_two_pairs": (2, dict(start=0, end=4)),
    "gqa_unpaired": (2, dict(start=0, end=0)),
    "gqa_unmerged": (2, dict(start=PAIR[0], end=PAIR[1], merge=False)),
    "mha_block": (4, dict(start=PAIR[0], end=PAIR[1], mode="block")),
    "gqa_block_two_pairs": (2, dict(start=0, end=4, mode="block")),
    "gqa_block_attention_bias": (2, dict(start=PAIR[0], end=PAIR[1], mode="block"), dict(attention_bias=True)),
}


def source_model(kv_heads: int, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        **overrides,
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        initializer_range=0.15,
        pad_token_id=0,
        eos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norm gains far from 1 so that folding them into the projections is exercised
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return model.eval()


def loss_gradients(model, ids: torch.Tensor, micro_batches: int = 1) -> dict[str, torch.Tensor]:
    """Gradients of the causal-LM loss on `ids` for every parameter, gathered to full tensors; with
    `micro_batches=2` accumulated over `ids` and `ids` reversed (no `zero_grad` in between)."""
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    if micro_batches == 2:
        flipped = torch.flip(ids, dims=[1])
        model(flipped, labels=flipped).loss.backward()
    grads = {}
    for key, param in model.named_parameters():
        grad = param.grad
        grads[key] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
    model.zero_grad(set_to_none=True)
    return grads


class AllReduceCounter:
    """Counts `torch.distributed.all_reduce` calls (the row-wise and vocabulary-parallel reductions of TP)."""

    def __init__(self):
        self.count = 0
        self._original = dist.all_reduce

    def __enter__(self):
        def counting(*args, **kwargs):
            self.count += 1
            return self._original(*args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._original


def load_bench():
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    spec = importlib.util.spec_from_file_location(
        "bench_layer_parallel", os.path.join(root, "scripts", "bench_layer_parallel.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(out_dir: str) -> None:
    if not dist.is_initialized():  # checks_in_turn.py runs it in a group it set up
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(2))
    if rank == 0:
        refs = {}
        for name, (kv, kwargs, *overrides) in MODELS.items():
            lp = convert_to_layer_parallel(source_model(kv, **(overrides[0] if overrides else {})), **kwargs)
            lp.save_pretrained(os.path.join(out_dir, name))
            torch.save(lp.state_dict(), os.path.join(out_dir, name, "state.pt"))
            with torch.no_grad():
                refs[name] = {
                    "logits": lp(ids).logits,
                    "generated": lp.generate(ids, max_new_tokens=6, do_sample=False),
                }
            refs[name]["grads"] = loss_gradients(lp, ids)
            refs[name]["accumulated"] = loss_gradients(lp, ids, micro_batches=2)
        torch.save(refs, os.path.join(out_dir, "refs.pt"))
    dist.barrier()
    refs = torch.load(os.path.join(out_dir, "refs.pt"))
    result = {}
    for name, (kv, *_) in MODELS.items():
        model = AutoModelForCausalLM.from_pretrained(
            os.path.join(out_dir, name), distributed_config=DistributedConfig(tp_plan="auto")
        ).eval()
        assert model._tp_size == 2
        with torch.no_grad(), AllReduceCounter() as counter, CommDebugMode() as dtensor_comms:
            logits = model(ids).logits
        torch.testing.assert_close(logits, refs[name]["logits"], atol=2e-5, rtol=2e-5)
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=6, do_sample=False)
            static = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
        assert torch.equal(generated, refs[name]["generated"]), name
        assert torch.equal(static, refs[name]["generated"]), name
        # Training: the gradient of every parameter (gathered from its shards) equals the single-process one.
        grads = loss_gradients(model, ids)
        assert grads.keys() == refs[name]["grads"].keys(), name
        for key, grad in grads.items():
            torch.testing.assert_close(grad, refs[name]["grads"][key], atol=2e-5, rtol=1e-4, msg=f"{name}: {key}")
        # Gradient accumulation over two micro-batches: each adds its gradient once.
        for key, grad in loss_gradients(model, ids, micro_batches=2).items():
            torch.testing.assert_close(
                grad, refs[name]["accumulated"][key], atol=2e-5, rtol=1e-4, msg=f"{name}, accumulated: {key}"
            )
        if name.endswith("_paired"):
            # The merged pair's local shards are exactly one source layer: layer 2 on rank 0, layer 3 on rank 1.
            src = source_model(kv).state_dict()
            layer = {k[len("model.layers.2.") :]: v for k, v in src.items() if k.startswith("model.layers.2.")}
            other = {k[len("model.layers.3.") :]: v for k, v in src.items() if k.startswith("model.layers.3.")}
            merged = merge_pair_state(layer, other, "sublayer", "per_layer")
            own = layer if rank == 0 else other
            block = model.model.layers[PAIR[0]]
            for proj, norm in (("self_attn.q_proj", "input_layernorm"), ("mlp.up_proj", "post_attention_layernorm")):
                local = dict(block.named_parameters())[f"{proj}.weight"].to_local()
                folded = own[f"{proj}.weight"] * own[f"{norm}.weight"][None, :]
                torch.testing.assert_close(local, folded)
                assert local.shape[0] * 2 == merged[f"{proj}.weight"].shape[0]
            down = block.mlp.down_proj.weight.to_local()
            torch.testing.assert_close(down, own["mlp.down_proj.weight"])
        if "block" in name:
            # A block pair's shards are one whole branch per rank: its output projection and MLP weights.
            layer = model.model.layers[0 if name.endswith("two_pairs") else PAIR[0]]
            full = torch.load(os.path.join(out_dir, name, "state.pt"))
            prefix = f"model.layers.{0 if name.endswith('two_pairs') else PAIR[0]}."
            for key in ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.gate_weight", "mlp.up_weight"):
                if prefix + key not in full:
                    continue
                local = dict(layer.named_parameters())[key].to_local()
                torch.testing.assert_close(local, full[prefix + key][rank : rank + 1])
        # Saved from the sharded model (every rank takes part in the gather), it reloads in one process unchanged.
        model.save_pretrained(os.path.join(out_dir, f"{name}_saved_under_tp"))
        dist.barrier()
        if rank == 0:
            reloaded = AutoModelForCausalLM.from_pretrained(os.path.join(out_dir, f"{name}_saved_under_tp")).eval()
            with torch.no_grad():
                torch.testing.assert_close(reloaded(ids).logits, refs[name]["logits"], atol=2e-5, rtol=2e-5)
        # The ranks stay in step: rank 1 starts the next model's collectives only after rank 0's single-process check
        # (a rank failing alone then leaves its peer at this barrier, not inside a half-issued DTensor collective).
        dist.barrier()
        result[name] = {
            "all_reduces_per_forward": counter.count,
            "dtensor_collectives_per_forward": dtensor_comms.get_total_counts(),
            "blocks": len(model.model.layers),
        }
    # Merged "block"-mode pairs with a bias on the MLP down projection are refused, before anything is loaded.
    if rank == 0:
        convert_to_layer_parallel(source_model(2, mlp_bias=True), start=2, end=4, mode="block").save_pretrained(
            os.path.join(out_dir, "block_mlp_bias")
        )
    dist.barrier()
    try:
        AutoModelForCausalLM.from_pretrained(
            os.path.join(out_dir, "block_mlp_bias"), distributed_config=DistributedConfig(tp_plan="auto")
        )
    except ValueError as err:
        assert "mlp_bias" in str(err), err
    else:
        raise AssertionError("a block-mode pair with an MLP down-projection bias was split by tensor parallelism")
    # The benchmark's --tp path on the same two ranks (a smoke run: CPU timings mean nothing here).
    result["bench"] = load_bench().main(
        ["--tiny", "--tp", "2", "--new_tokens", "8", "--repeats", "2", "--batch_sizes", "1", "--prompt_length", "4",
         "--work_dir", os.path.join(out_dir, "bench")]
    )  # fmt: skip
    if rank == 0:
        with open(os.path.join(out_dir, "tp_result.json"), "w") as f:
            json.dump(result, f, indent=1)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
    dist.destroy_process_group()
