"""Reweighting overhead of GrapeTrainer as a percentage of training step time.

Trains the recipe's tiny Llama on the embedded corpus (9 source domains, 2 held-out target tasks) with GRAPE at the
given reweighting period(s) and, in the same process, with a uniform mixture (no reweighting) as the baseline.
Prints one JSON line per configuration:

* `overhead_pct`: time spent in reweighting / time spent in training steps, inside the GRAPE run;
* `step_ratio_vs_uniform`: GRAPE wall time per step (reweighting included) / uniform wall time per step.

Usage: python scripts/bench_grape.py [--steps 200] [--periods 100] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="Optimizer steps per run.")
    parser.add_argument("--periods", type=str, default="100", help="Comma-separated reweighting periods.")
    parser.add_argument("--batch_size", type=int, default=16, help="Per-device training batch size.")
    parser.add_argument("--block_size", type=int, default=64, help="Tokens per block.")
    parser.add_argument("--hidden_size", type=int, default=64, help="Hidden size of the tiny Llama.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    ns = parser.parse_args(argv)
    periods = [int(p) for p in ns.periods.split(",") if p.strip()]
    if ns.steps <= 0 or not periods or any(p <= 0 or p > ns.steps for p in periods):
        raise ValueError("--steps must be positive and every period in --periods must be in [1, steps].")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_ext.data import build_tokenizer, load_corpus
    from hf_ext.grape import GrapeConfig, GrapeTrainer
    from hf_ext.recipes.grape import DEFAULT_TARGETS, _parse_pairs

    if ns.threads:
        torch.set_num_threads(ns.threads)
    tokenizer = build_tokenizer(4096)
    sources = load_corpus("train")
    held_out = load_corpus("test")
    targets = {
        name: held_out.filter(lambda r, w=set(doms.split("+")): r["domain"] in w)
        for name, doms in _parse_pairs(DEFAULT_TARGETS, "targets").items()
    }

    def model():
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(
            "llama",
            vocab_size=len(tokenizer),
            hidden_size=ns.hidden_size,
            intermediate_size=3 * ns.hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=max(128, ns.block_size),
            tie_word_embeddings=True,
        )
        return AutoModelForCausalLM.from_config(cfg)

    def run(method: str, period: int) -> tuple[float, float, int]:
        with tempfile.TemporaryDirectory() as out:
            args = GrapeConfig(
                output_dir=out,
                reweight_method=method,
                max_steps=ns.steps,
                per_device_train_batch_size=ns.batch_size,
                block_size=ns.block_size,
                reweight_domains_every=period,
                reweight_tasks_every=period,
                learning_rate=2e-3,
                report_to="none",
                save_strategy="no",
                logging_steps=10**6,
                disable_tqdm=True,
                plot_file="",
            )
            trainer = GrapeTrainer(
                model=model(), args=args, train_dataset=sources, target_datasets=targets, processing_class=tokenizer
            )
            start = time.perf_counter()
            trainer.train()
            total = time.perf_counter() - start
            return total, trainer.reweight_seconds, trainer.mixture_state.domain_updates

    uniform_total, _, _ = run("uniform", periods[0])
    results = []
    for period in periods:
        total, reweight, events = run("grape", period)
        train_only = total - reweight
        row = {
            "bench": "grape_reweighting_overhead",
            "device": device_name(),
            "period": period,
            "steps": ns.steps,
            "reweight_events": events,
            "domains": 9,
            "tasks": len(targets),
            "reweight_batch_size": 16,
            "reweight_mini_batch_size": 8,
            "train_batch_size": ns.batch_size,
            "block_size": ns.block_size,
            "seconds_per_step": round(train_only / ns.steps, 4),
            "seconds_per_reweight_event": round(reweight / max(events, 1), 4),
            "overhead_pct": round(100.0 * reweight / train_only, 2),
            "uniform_seconds_per_step": round(uniform_total / ns.steps, 4),
            "step_ratio_vs_uniform": round(total / uniform_total, 4),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


if __name__ == "__main__":
    main()
