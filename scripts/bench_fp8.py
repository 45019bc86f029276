"""Train-step throughput of Llama-style vs FOG blocks in BF16 and in FP8 (torchao tensorwise / rowwise).

Prints one JSON line per configuration with tokens/s and the ratio to the BF16 run of the same model measured in the
same process. GPU default: Llama-3-8B width (hidden 4096, SwiGLU 14336, 32 heads, 8 KV heads), 4 layers, sequence 4096,
batch 4, vocabulary 131072, torch.compile. `--tiny` runs a seconds-long CPU smoke test of the same code path.

    python scripts/bench_fp8.py                 # on an H100 / H200
    python scripts/bench_fp8.py --tiny          # anywhere
"""

from __future__ import annotations

import argparse
import gc
import json
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke size: hidden 64, 2 layers, seq 64, 3 timed steps.")
    p.add_argument("--hidden_size", type=int, default=4096)
    p.add_argument("--swiglu_intermediate_size", type=int, default=14336, help="FOG's ungated MLP gets 1.5x this.")
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=32)
    p.add_argument("--num_key_value_heads", type=int, default=8)
    p.add_argument("--vocab_size", type=int, default=131072)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--models", default="llama,fog", help="Comma list of llama, fog.")
    p.add_argument("--precisions", default="bf16,fp8_tensorwise,fp8_rowwise", help="Comma list.")
    p.add_argument("--no_compile", action="store_true", help="Skip torch.compile (default: compile on CUDA).")
    p.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    args = p.parse_args(argv)
    if args.tiny:
        args.hidden_size, args.swiglu_intermediate_size, args.num_hidden_layers = 64, 128, 2
        args.num_attention_heads, args.num_key_value_heads, args.vocab_size = 4, 2, 512
        args.seq_len, args.batch_size, args.warmup_steps = 64, 4, 1
        args.steps = min(args.steps, 3)
        args.no_compile = True
    for name in ("hidden_size", "num_hidden_layers", "seq_len", "batch_size", "steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    if args.hidden_size % 16 or args.swiglu_intermediate_size % 16:
        raise ValueError("--hidden_size and --swiglu_intermediate_size must be multiples of 16 for FP8 GEMMs.")
    for m in args.models.split(","):
        if m not in ("llama", "fog"):
            raise ValueError(f"--models: unknown model {m!r}; use llama and/or fog.")
    for prec in args.precisions.split(","):
        if prec not in ("bf16", "fp8_tensorwise", "fp8_rowwise"):
            raise ValueError(f"--precisions: unknown {prec!r}; use bf16, fp8_tensorwise, fp8_rowwise.")
    return args


def build(model_name: str, args, device):
    import torch

    from hf_ext.models.fog import FogConfig, FogForCausalLM

    common = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=args.seq_len,
        swiglu_intermediate_size=args.swiglu_intermediate_size,
        use_cache=False,
    )
    cfg = FogConfig.fog(**common) if model_name == "fog" else FogConfig.llama_baseline(**common)
    torch.manual_seed(0)
    with torch.device(device):
        model = FogForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
    return model.train()


def bench_one(model_name: str, precision: str, args, device) -> float:
    import torch

    from hf_ext.fp8 import convert

    model = build(model_name, args, device)
    if precision.startswith("fp8"):
        convert(model, "torchao", recipe=precision.split("_", 1)[1])
    step_model = model if args.no_compile else torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=device)

    def step():
        loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup_steps):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    return args.batch_size * args.seq_len * args.steps / elapsed


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import torch

    import hf_ext  # noqa: F401

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    rows = []
    for model_name in args.models.split(","):
        base = None
        for precision in args.precisions.split(","):
            tps = bench_one(model_name, precision, args, device)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if precision == "bf16":
                base = tps
            row = {
                "model": model_name,
                "precision": precision,
                "tokens_per_s": round(tps, 1),
                "ratio_vs_bf16_same_model": round(tps / base, 3) if base else None,
                "device": device_name,
                "shape": f"h{args.hidden_size} L{args.num_hidden_layers} seq{args.seq_len} bs{args.batch_size}",
                "compile": not args.no_compile,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    bf16 = {r["model"]: r["tokens_per_s"] for r in rows if r["precision"] == "bf16"}
    if "fog" in bf16 and "llama" in bf16:
        row = {"model": "fog_vs_llama", "precision": "bf16", "ratio": round(bf16["fog"] / bf16["llama"], 3)}
        row["device"] = device_name
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
