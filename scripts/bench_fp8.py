"""Train-step throughput of Llama-style vs FOG blocks in BF16 and in FP8 (torchao tensorwise / rowwise).

Prints one JSON line per configuration with tokens/s and the ratio to the BF16 run of the same model measured in the
same process, for the Llama-style baseline and FOG side by side (both with torchao FP8), then one summary line with
the issue's targets: FOG FP8 / FOG BF16 tokens/s (target >= 1.40) and FOG BF16 / Llama BF16 (target >= 0.97). GPU
default: Llama-3-8B width (hidden 4096, SwiGLU 14336, 32 heads, 8 KV heads) with 8 layers, so that the BF16 LM head
(vocabulary 131072) does not dominate the step, sequence 4096, batch 4, torch.compile. `--tiny` runs a seconds-long CPU
smoke test of the same code path.

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
    p.add_argument("--num_hidden_layers", type=int, default=8, help="At 8B width, >= 8 keeps the LM head minor.")
    p.add_argument("--num_attention_heads", type=int, default=32)
    p.add_argument("--num_key_value_heads", type=int, default=8)
    p.add_argument("--vocab_size", type=int, default=131072)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--warmup_steps", type=int, default=3, help="Untimed steps (the first one compiles).")
    p.add_argument("--steps", type=int, default=10)
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
    for name in (
        "hidden_size", "swiglu_intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vocab_size", "seq_len", "batch_size", "steps",
    ):  # fmt: skip
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    if args.warmup_steps < 0:  # was taken as 0 warm-up steps, silently
        raise ValueError(f"--warmup_steps must be >= 0, got {args.warmup_steps}.")
    if args.hidden_size % 16 or args.swiglu_intermediate_size % 16:
        raise ValueError("--hidden_size and --swiglu_intermediate_size must be multiples of 16 for FP8 GEMMs.")
    if args.hidden_size % args.num_attention_heads or args.num_attention_heads % args.num_key_value_heads:
        raise ValueError(
            f"--num_attention_heads {args.num_attention_heads} must divide --hidden_size {args.hidden_size}, and "
            f"--num_key_value_heads {args.num_key_value_heads} must divide --num_attention_heads."
        )
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
    summary = summarize(rows, device_name)
    print(json.dumps(summary), flush=True)
    rows.append(summary)
    return rows


def summarize(rows: list[dict], device_name: str) -> dict:
    """One line: tokens/s of every (model, precision) side by side and the two throughput targets of the FOG work
    (`met` is `None` when a ratio was not measured; on CPU the ratios say nothing about GPU speed)."""
    tps = {f"{r['model']}/{r['precision']}": r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    fp8 = [r for r in rows if r.get("model") == "fog" and r.get("precision", "").startswith("fp8")]
    best = max(fp8, key=lambda r: r["tokens_per_s"], default=None)
    fog_fp8 = round(best["ratio_vs_bf16_same_model"], 3) if best and best["ratio_vs_bf16_same_model"] else None
    fog_llama = next((r["ratio"] for r in rows if r.get("model") == "fog_vs_llama"), None)
    return {
        "model": "summary",
        "precision": None,
        "device": device_name,
        "tokens_per_s": tps,
        "fog_fp8_vs_fog_bf16": fog_fp8,
        "fog_fp8_precision": best["precision"] if best else None,
        "fog_bf16_vs_llama_bf16": fog_llama,
        "targets": {
            "fog_fp8_vs_fog_bf16>=1.40": None if fog_fp8 is None else fog_fp8 >= 1.40,
            "fog_bf16_vs_llama_bf16>=0.97": None if fog_llama is None else fog_llama >= 0.97,
        },
    }


if __name__ == "__main__":
    main()
