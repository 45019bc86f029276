"""Accuracy of HyperINF, DataInf, LiSSA (and TracIn, the control) against the exact influence, vs LoRA width and rank.

For each seed, LoRA fine-tunes a small token classifier whose adapted projection is `d x d` (see
`hf_ext.hyperinf.reproduce`), takes per-example LoRA gradients once, and scores the training set with every method.
Prints one line per (seed, width, rank, method) and a markdown table of the Spearman correlation with the exact
GFIM-inverse influence (and with the exact FIM-inverse influence where `r d <= --max_fim_dim`): mean [min, max] over
seeds, plus the mean influence time per method (fit + scores, shared per-example gradients excluded).

Usage: python scripts/bench_hyperinf.py [--seeds 0,1,2] [--widths 64,128,256,512,1024] [--ranks 1,4,16]
       [--output bench_hyperinf.json]
"""

from __future__ import annotations

import argparse
import os
import platform

from hf_ext.utils.argtypes import int_at_least, output_file


def int_list(minimum: int):
    """An argparse `type`: comma-separated integers, each >= `minimum`, at least one."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(item) for item in text.split(",") if item.strip()]
        except ValueError:
            values = []
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= {minimum}, got {text!r}")
        return values

    return parse


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds",
        type=int_list(0),
        default="0,1,2",
        help="Comma-separated seeds (at least 3 for the documented table).",
    )
    parser.add_argument(
        "--widths", type=int_list(1), default="64,128,256,512,1024", help="Layer widths d of the width sweep."
    )
    parser.add_argument("--width_rank", type=int_at_least(1), default=4, help="LoRA rank of the width sweep.")
    parser.add_argument("--ranks", type=int_list(1), default="1,4,16", help="LoRA ranks of the rank sweep.")
    parser.add_argument("--rank_width", type=int_at_least(1), default=256, help="Layer width of the rank sweep.")
    parser.add_argument(
        "--max_fim_dim",
        type=int_at_least(0),
        default=4096,
        help="Largest r*d for the exact-FIM reference (0: no exact-FIM reference).",
    )
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch CPU threads.")
    parser.add_argument(
        "--output", type=output_file, default=None, help="Write records and summary to this JSON file (atomically)."
    )
    ns = parser.parse_args(argv)
    seeds, widths, ranks = ns.seeds, ns.widths, ns.ranks

    import torch

    from hf_ext.hyperinf.reproduce import accuracy_sweep, markdown_table, records_as_dicts, summarize
    from hf_ext.utils import atomic_write_json

    torch.set_num_threads(ns.threads)
    records = accuracy_sweep(
        seeds=seeds,
        widths=widths,
        width_rank=ns.width_rank,
        ranks=ranks,
        rank_width=ns.rank_width,
        max_fim_dim=ns.max_fim_dim,
    )
    rows = summarize(records)
    machine = f"CPU ({platform.machine()}), {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"\n{machine}, torch {torch.__version__}, seeds {seeds}\n")
    print(markdown_table(rows))
    if ns.output:
        atomic_write_json(ns.output, {"machine": machine, "records": records_as_dicts(records), "summary": rows})
    return rows


if __name__ == "__main__":
    main()
