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

from hf_ext.utils.argtypes import int_at_least


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, {os.cpu_count()} cores"


HEADS = 4  # attention heads of the tiny Llama


def hidden_size(text: str) -> int:
    """An argparse `type`: the tiny Llama's width, split over its 4 attention heads of an even (rotary) dimension."""
    value = int_at_least(1)(text)
    if value % (2 * HEADS):
        raise argparse.ArgumentTypeError(
            f"must be a multiple of {2 * HEADS} ({HEADS} attention heads, each of an even dimension for the rotary "
            f"embeddings), got {value}; e.g. {max(2 * HEADS, value - value % (2 * HEADS))}"
        )
    return value


def period_list(text: str) -> list[int]:
    """An argparse `type`: comma-separated reweighting periods, each an integer >= 1."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers >= 1 like '50,100', got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1 like '50,100', got {text!r}")
    return values


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int_at_least(1), default=200, help="Optimizer steps per run.")
    parser.add_argument(
        "--periods", type=period_list, default="100", help="Comma-separated reweighting periods, each in [1, --steps]."
    )
    parser.add_argument("--batch_size", type=int_at_least(1), default=16, help="Per-device training batch size.")
    parser.add_argument("--block_size", type=int_at_least(1), default=64, help="Tokens per block.")
    parser.add_argument(
        "--hidden_size",
        type=hidden_size,
        default=64,
        help=f"Hidden size of the tiny Llama (a multiple of {2 * HEADS}).",
    )
    parser.add_argument(
        "--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's choice)."
    )
    ns = parser.parse_args(argv)
    if max(ns.periods) > ns.steps:
        parser.error(f"argument --periods: every period must be in [1, --steps {ns.steps}], got {max(ns.periods)}")
    periods = ns.periods

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_ext.data import build_tokenizer, load_corpus
    from hf_ext.grape import GrapeConfig, GrapeTrainer
    from hf_ext.recipes.grape import DEFAULT_TARGETS, _parse_pairs

    if ns.threads is not None:
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
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
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
