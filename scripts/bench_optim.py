"""Optimizer-step cost of the rotational optimizers against AdamW, measured side by side.

Builds a Llama- or GPT-2-architecture model from a config, gives every parameter a fixed random gradient and times
`optimizer.step()` alone (no forward/backward) for each optimizer, interleaving the optimizers round by round so
machine load hits them alike. Prints one JSON line per optimizer with the median step time and its ratio to
`torch.optim.AdamW` with its default implementation on this device (`ratio_vs_adamw`) and to AdamW with foreach
kernels (`ratio_vs_adamw_foreach`); on CPU also the median CPU time of the stepping thread and its ratios
(`cpu_ratio_vs_adamw`, ...), which time-sharing with other jobs inflates far less than wall time. The rotational optimizers group the parameters from the model
(`rotational_param_groups`: decayed 2+-dim weights rotate, embeddings and vectors get the inner step).

Usage: python scripts/bench_optim.py [--arch llama] [--hidden_size 512] [--layers 4] [--rounds 30] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, {os.cpu_count()} cores"


def build_model(arch: str, hidden: int, layers: int, vocab: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        # GPT2Config's bos/eos default to 50256, outside a smaller vocabulary (transformers warns on every run)
        return GPT2LMHeadModel(
            GPT2Config(
                n_embd=hidden,
                n_layer=layers,
                n_head=max(hidden // 64, 1),
                vocab_size=vocab,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 64, 1),
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("llama", "gpt2"), default="llama", help="Model architecture.")
    parser.add_argument("--hidden_size", type=int, default=512, help="Hidden size.")
    parser.add_argument("--layers", type=int, default=4, help="Decoder layers.")
    parser.add_argument("--vocab_size", type=int, default=8192, help="Vocabulary size.")
    parser.add_argument("--rounds", type=int, default=30, help="Timed steps per optimizer (after 3 warm-up steps).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="Device.")
    parser.add_argument(
        "--optimizers",
        default="adamw,adamw_foreach,rotational_adamw,rotational_lion,lion_ar",
        help="Comma list from adamw, adamw_foreach, adamw_fused, rotational_adamw, rotational_adamw_unfused "
        "(its direction without torch's fused AdamW kernel), rotational_lion, rotational_sgdm, lion_ar.",
    )
    ns = parser.parse_args(argv)
    if ns.rounds < 1 or ns.hidden_size < 64 or ns.layers < 1:
        raise ValueError("--rounds must be >= 1, --hidden_size >= 64 and --layers >= 1.")
    # a vocabulary of 0 built a model without embedding and head; --threads 0 was silently ignored
    if ns.vocab_size < 1:
        raise ValueError(f"--vocab_size must be >= 1, got {ns.vocab_size}.")
    if ns.threads is not None and ns.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {ns.threads} (leave it out for torch's choice).")
    # the model has hidden_size // 64 heads (at least one); transformers refused an uneven split (or, for Llama, an odd
    # head dimension, which the rotary embeddings cannot rotate) only while building the model, naming no flag
    heads = max(ns.hidden_size // 64, 1)
    if ns.hidden_size % heads or (ns.arch == "llama" and (ns.hidden_size // heads) % 2):
        raise ValueError(
            f"--hidden_size {ns.hidden_size} does not split over the model's {heads} attention heads (hidden_size // "
            f"64) into equal{' and even' if ns.arch == 'llama' else ''} head dimensions; use a multiple of 64 (e.g. "
            f"--hidden_size {64 * heads})."
        )

    import torch

    from hf_ext.optim import LionAR, RotationalWrapper

    if ns.threads is not None:
        torch.set_num_threads(ns.threads)
    names = [n.strip() for n in ns.optimizers.split(",") if n.strip()]
    known = {
        "adamw",
        "adamw_foreach",
        "adamw_fused",
        "rotational_adamw",
        "rotational_adamw_unfused",
        "rotational_lion",
        "rotational_sgdm",
        "lion_ar",
    }
    if not names or set(names) - known:
        raise ValueError(f"--optimizers must list names from {sorted(known)}, got {ns.optimizers!r}.")
    # one run per name: a repeated name used to print the same measurement twice, as if it were a second sample
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"--optimizers lists {', '.join(map(repr, repeated))} more than once ({ns.optimizers!r}); each optimizer "
            "is timed once per round, so list each name once (use --rounds for more samples)."
        )
    for base in ("adamw", "adamw_foreach"):
        if base not in names:
            names.insert(0, base)

    runs = {}
    for name in names:
        model = build_model(ns.arch, ns.hidden_size, ns.layers, ns.vocab_size).to(ns.device)
        g = torch.Generator(device=ns.device).manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g, device=ns.device, dtype=p.dtype) * 1e-2
        lr, wd = 1e-3, 0.1
        if name.startswith("adamw"):
            kw = {"adamw_foreach": dict(foreach=True), "adamw_fused": dict(fused=True)}.get(name, {})
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, **kw)
        elif name == "lion_ar":
            opt = LionAR(model, lr=lr * 0.1, weight_decay=wd / 0.1)
        elif name == "rotational_adamw_unfused":
            opt = RotationalWrapper(model, inner="adamw", lr=lr, weight_decay=wd, fused=False)
        else:
            opt = RotationalWrapper(model, inner=name.split("_", 1)[1], lr=lr, weight_decay=wd)
        runs[name] = (model, opt, [])
    n_params = sum(p.numel() for p in next(iter(runs.values()))[0].parameters())

    def sync():
        if ns.device.startswith("cuda"):
            torch.cuda.synchronize()

    cpu_times = {name: [] for name in runs}  # CPU time of this thread: insensitive to preemption on a shared host
    for r in range(ns.rounds + 3):
        for name, (_, opt, times) in runs.items():
            sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            opt.step()
            sync()
            if r >= 3:
                times.append(time.perf_counter() - t0)
                cpu_times[name].append(time.thread_time() - c0)
    med = {name: statistics.median(times) for name, (_, _, times) in runs.items()}
    cpu_med = {name: statistics.median(times) for name, times in cpu_times.items()}
    on_cpu = not ns.device.startswith("cuda")
    rows = []
    for name in names:
        times = runs[name][2]
        row = {
            "bench": "optimizer_step",
            "optimizer": name,
            "arch": ns.arch,
            "parameters": n_params,
            "median_step_ms": round(med[name] * 1e3, 3),
            "iqr_ms": round((statistics.quantiles(times, n=4)[2] - statistics.quantiles(times, n=4)[0]) * 1e3, 3)
            if len(times) >= 4
            else None,
            "ratio_vs_adamw": round(med[name] / med["adamw"], 3),
            "ratio_vs_adamw_foreach": round(med[name] / med["adamw_foreach"], 3),
            # CPU only (on a GPU the host thread mostly waits): median thread CPU time and its ratios
            "median_cpu_ms": round(cpu_med[name] * 1e3, 3) if on_cpu else None,
            "cpu_ratio_vs_adamw": round(cpu_med[name] / cpu_med["adamw"], 3) if on_cpu else None,
            "cpu_ratio_vs_adamw_foreach": round(cpu_med[name] / cpu_med["adamw_foreach"], 3) if on_cpu else None,
            "rounds": ns.rounds,
            "device": device_name(ns.device),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
