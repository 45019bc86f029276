"""`hf-ext reproduce <method> [--seeds N] [--fast]`: run a method's reproduction and judge the paper's claim.

Each method registers a `Reproduction` in `hf_ext.reproduce.methods`: the claims it checks (the paper's statement or
number, and a judge that turns the per-seed results into our number and a verdict), and a `run(seed, fast, workdir)`
that produces one seed's results with the package's own recipes and functions. The slow tests call `reproduce()`
exactly as the command does, so what the docs report is what the tests assert.

A verdict is `holds` when the claim's direction holds on the mean over seeds with the stated slack, `does not hold`
otherwise; the table always shows mean and spread so a reader can judge the margin.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence


@dataclasses.dataclass
class Claim:
    """One claim of a paper and how to judge it from the per-seed results of a reproduction."""

    name: str
    paper: str
    judge: Callable[[list[dict]], tuple[str, bool]]
    #: asserted by the slow test; a claim known not to reproduce at this scale is reported with `asserted=False`.
    asserted: bool = True


@dataclasses.dataclass
class Reproduction:
    """A method's reproduction: what it runs per seed and which claims it judges."""

    method: str
    title: str
    run: Callable[[int, bool, str], dict]
    claims: Sequence[Claim]
    default_seeds: int = 3
    setting: str = ""


@dataclasses.dataclass
class Row:
    claim: str
    paper: str
    ours: str
    verdict: str
    asserted: bool = True


@dataclasses.dataclass
class Report:
    method: str
    title: str
    setting: str
    seeds: list[int]
    fast: bool
    rows: list[Row]
    seconds: float
    date: str
    machine: str
    per_seed: list[dict]

    @property
    def holds(self) -> bool:
        """Every asserted claim holds (claims reported with `asserted=False` are shown, not required)."""
        return all(r.verdict == "holds" for r in self.rows if r.asserted)

    def to_markdown(self) -> str:
        lines = [
            f"### {self.method}: {self.title}",
            "",
            f"{self.setting} Seeds {self.seeds}{' (fast mode)' if self.fast else ''}; {self.seconds:.0f} s on "
            f"{self.machine}, {self.date}.",
            "",
            "| claim | paper | ours (mean ± spread over seeds) | verdict |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(r.claim)} | {_cell(r.paper)} | {_cell(r.ours)} | {r.verdict}"
            f"{'' if r.asserted else ' (reported, not asserted)'} |"
            for r in self.rows
        ]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: a literal `|` would end the cell."""
    return str(text).replace("|", "\\|")


def mean_spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """'mean ± sample std (min..max)' of a list of numbers."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        spread = 0.0
    else:  # statistics.stdev raises an AttributeError on a NaN or inf: that ended the run with no report
        spread = statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan
    spread_text = fmt.format(spread).lstrip("+")  # a spread has no sign, even with a signed format
    return f"{fmt.format(mean)} ± {spread_text} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def machine_description() -> str:
    """The device the run used, in words (GPU name or CPU core count)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"CPU, {os.cpu_count()} cores ({platform.machine()}), torch threads {torch.get_num_threads()}"


def available_methods() -> dict[str, str]:
    """Method name -> one-line title, for `hf-ext reproduce --list`."""
    from .methods import REPRODUCTIONS

    return {name: rep.title for name, rep in REPRODUCTIONS.items()}


def reproduce(
    method: str,
    seeds: int | Sequence[int] | None = None,
    fast: bool = False,
    output_dir: str | None = None,
    jobs: int = 1,
) -> Report:
    """Run `method`'s reproduction over `seeds` (a count, or explicit seeds) and judge its claims.

    Args:
        method: a name from `available_methods()`.
        seeds: how many seeds (0, 1, ... N-1) or which seeds; default: the method's own default (>= 3).
        fast: a smaller budget, for checking that the reproduction runs; verdicts are then only indicative.
        output_dir: where runs keep their files (and where `reproduction.json` / `reproduction.md` are written);
            a temporary folder that is removed afterwards if not given.
        jobs: how many seeds run at the same time, each in its own process (default 1: one after the other, in this
            process). Every seed is seeded on its own, so the results do not depend on `jobs`; timings measured
            inside a run do (the processes share the machine).
    """
    from .methods import REPRODUCTIONS

    if method not in REPRODUCTIONS:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(REPRODUCTIONS)}.")
    spec = REPRODUCTIONS[method]
    if seeds is None:
        seeds = spec.default_seeds
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or (isinstance(seeds, int) and seeds < 1):
        raise ValueError(f"--seeds must be a positive number of seeds, got {seeds!r}.")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct (each seed has its own run folder), got {seed_list}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a positive number of parallel processes, got {jobs!r}.")
    if output_dir:
        from ..utils.io import ensure_writable_dir

        ensure_writable_dir(output_dir, "--output_dir")
        from ..recipes._common import clear_previous_results

        # an earlier report (perhaps "holds") must not look current if this run fails before writing its own
        clear_previous_results(output_dir, ("reproduction.json", "reproduction.md"))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hf_ext-reproduce-{method}-") as scratch:
        root = output_dir or scratch
        workdirs = [os.path.join(root, f"seed{seed}") for seed in seed_list]
        for workdir in workdirs:
            os.makedirs(workdir, exist_ok=True)
        if jobs == 1 or len(seed_list) == 1:
            per_seed = [spec.run(seed, fast, workdir) for seed, workdir in zip(seed_list, workdirs)]
        else:
            per_seed = _run_in_processes(spec.run, seed_list, fast, workdirs, jobs)
        rows = _judge(spec, per_seed)
        report = Report(
            method=method,
            title=spec.title,
            setting=spec.setting,
            seeds=seed_list,
            fast=fast,
            rows=rows,
            seconds=time.perf_counter() - start,
            date=datetime.date.today().isoformat(),
            machine=machine_description(),
            per_seed=per_seed,
        )
        if output_dir:
            from ..utils.io import atomic_write_json, atomic_write_text

            atomic_write_json(os.path.join(output_dir, "reproduction.json"), _jsonable(dataclasses.asdict(report)))
            atomic_write_text(os.path.join(output_dir, "reproduction.md"), report.to_markdown())
    return report


def _judge(spec: Reproduction, per_seed: list[dict]) -> list[Row]:
    rows = []
    for claim in spec.claims:
        ours, ok = claim.judge(per_seed)
        rows.append(Row(claim.name, claim.paper, ours, "holds" if ok else "does not hold", claim.asserted))
    return rows


def rejudge(output_dir: str) -> Report:
    """Judge a finished reproduction again, from the per-seed results in `output_dir/reproduction.json`, with the
    claims as registered now (e.g. after a claim was added); rewrites `reproduction.json` and `reproduction.md`."""
    from ..utils.io import atomic_write_json, atomic_write_text
    from .methods import REPRODUCTIONS

    path = os.path.join(output_dir, "reproduction.json")
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        method, per_seed = saved["method"], saved["per_seed"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a reproduction written by `hf-ext reproduce --output_dir`: {err}") from err
    if method not in REPRODUCTIONS:
        raise ValueError(f"{path}: unknown method {method!r}; choose one of {sorted(REPRODUCTIONS)}.")
    spec = REPRODUCTIONS[method]
    fields = {f.name for f in dataclasses.fields(Report)} - {"rows", "title", "setting"}
    report = Report(**{k: saved[k] for k in fields}, title=spec.title, setting=spec.setting, rows=_judge(spec, per_seed))
    atomic_write_json(path, _jsonable(dataclasses.asdict(report)))
    atomic_write_text(os.path.join(output_dir, "reproduction.md"), report.to_markdown())
    return report


def _run_in_processes(run: Callable, seeds: list[int], fast: bool, workdirs: list[str], jobs: int) -> list[dict]:
    """Run the seeds in up to `jobs` fresh ("spawn") processes; results come back in seed order. `run` must be a
    module-level function (it is sent to the workers by name)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads or a CUDA context
    with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=ctx) as pool:
        futures = [pool.submit(run, s, fast, w) for s, w in zip(seeds, workdirs)]
        return [f.result() for f in futures]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: repr(o)))
