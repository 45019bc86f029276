"""`hf-ext reproduce <method> [--seeds N] [--fast]`: run a method's reproduction and judge the paper's claim.

Each method registers a `Reproduction` in `hf_ext.reproduce.methods`: the claims it checks (the paper's statement or
number, and a judge that turns the per-seed results into our number and a verdict), and a `run(seed, fast, workdir)`
that produces one seed's results with the package's own recipes and functions. The slow tests call `reproduce()`
exactly as the command does, so what the docs report is what the tests assert.

A verdict is `holds` when the claim's direction holds on the mean over seeds with the stated slack, `does not hold`
otherwise; the table always shows mean and spread so a reader can judge the margin (with one seed there is no spread,
and the table says so).

The report's overall verdict (`Report.holds`, `Report.verdict`, the line under the table and the command's exit code):
every asserted claim holds (`True`, exit 0); an asserted claim does not hold (`False`, exit 1); or the method asserts
no claim at all, so the run reports numbers but can neither pass nor fail (`None`, "reported only", exit 3). Exit 2 is
a usage error, as is a full run over fewer seeds than the method's judge needs for any verdict (`Reproduction.min_seeds`,
e.g. a sign test over seeds). A `--fast` run is a smoke check that the reproduction runs, not evidence for or against
a claim.
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
from collections.abc import Callable, Mapping, Sequence


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
    #: the phrases of `setting` that state the full budget, and what `--fast` runs instead (e.g. {"200 steps":
    #: "40 steps"}): a fast run's report states the budget it actually ran
    fast_budget: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: fewer seeds than this cannot give a verdict (e.g. a sign test over seeds cannot reach p < 0.05 with 4), so a
    #: full run with fewer is refused before any work, naming why; a `--fast` smoke run takes any number
    min_seeds: int = 1
    #: why `min_seeds` (the end of the refusal's sentence)
    min_seeds_reason: str = ""

    def check_seed_count(self, count: int, fast: bool) -> None:
        """Refuse a full run over fewer than `min_seeds` seeds (a `ValueError` naming `--seeds`)."""
        if not fast and count < self.min_seeds:
            raise ValueError(
                f"{self.method}: --seeds {count} cannot give a verdict: {self.min_seeds_reason}; run at least "
                f"{self.min_seeds} seeds (the default is {self.default_seeds}), or --fast for a smoke check."
            )

    def setting_for(self, fast: bool) -> str:
        """The setting line of a report: with `fast`, the budget phrases replaced by the fast budget."""
        if not fast:
            return self.setting
        # a phrase the setting no longer has (edited without its fast_budget): say so rather than state a wrong budget;
        # tests/test_data_cli_audit_fixes.py checks that every registered phrase is present
        complete = bool(self.fast_budget) and all(k in self.setting for k in self.fast_budget)
        text = self.setting
        for full, cut in self.fast_budget.items():
            text = text.replace(full, cut)
        if not complete:
            text = f"{text} (--fast: a smaller budget than the full reproduction's stated here)".lstrip()
        return text


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
    def holds(self) -> bool | None:
        """`True` when every asserted claim holds, `False` when one does not (claims reported with `asserted=False`
        are shown, not required), and `None` when no claim is asserted: nothing was tested, so nothing "holds"."""
        asserted = [r for r in self.rows if r.asserted]
        if not asserted:
            return None
        return all(r.verdict == "holds" for r in asserted)

    @property
    def verdict(self) -> str:
        """The overall verdict in words: "holds", "does not hold" or "reported only" (no asserted claim)."""
        return {True: "holds", False: "does not hold", None: "reported only"}[self.holds]

    @property
    def exit_code(self) -> int:
        """`hf-ext reproduce`'s exit code: 0 holds, 1 does not hold, 3 reported only (2 is a usage error)."""
        return {True: 0, False: 1, None: 3}[self.holds]

    def verdict_line(self) -> str:
        asserted = [r for r in self.rows if r.asserted]
        if self.holds is None:
            text = (f"Verdict: reported only. This reproduction asserts no claim (all {len(self.rows)} are reported, "
                    "not asserted), so it neither holds nor fails.")  # fmt: skip
        elif self.holds:
            text = f"Verdict: holds (every asserted claim: {len(asserted)} of {len(self.rows)} claims)."
        else:
            failed = sum(r.verdict != "holds" for r in asserted)
            text = f"Verdict: does not hold ({failed} of {len(asserted)} asserted claims do not hold)."
        if self.fast:
            text += (" This was a --fast run: a smoke check that the reproduction runs, not evidence for or against "
                     "the claims.")  # fmt: skip
        return text

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
        lines += ["", self.verdict_line()]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: a literal `|` would end the cell."""
    return str(text).replace("|", "\\|")


def mean_spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """'mean ± sample std (min..max)' of a list of numbers; 'mean (one seed: no spread)' of a single number (a sample
    standard deviation is undefined for one value, and "± 0" would claim a spread that was not measured)."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{fmt.format(mean)} (one seed: no spread)"
    # statistics.stdev raises an AttributeError on a NaN or inf: that ended the run with no report
    spread = statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan
    spread_text = fmt.format(spread).lstrip("+")  # a spread has no sign, even with a signed format
    # min / max skip a NaN that is not first: the range of a set with a NaN seed is NaN, whatever the order
    finite_range = all(not math.isnan(v) for v in values)
    low, high = (min(values), max(values)) if finite_range else (math.nan, math.nan)
    return f"{fmt.format(mean)} ± {spread_text} ({fmt.format(low)}..{fmt.format(high)})"


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
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run `method`'s reproduction over `seeds` (a count, or explicit seeds) and judge its claims.

    Args:
        method: a name from `available_methods()`.
        seeds: how many seeds (a positive int N <= `MAX_SEEDS` (10000): 0, 1, ... N-1) or which seeds (a list of at
            most `MAX_SEEDS` distinct ints in [0, 2**32)); default: the method's own default (>= 3). Checked in full
            before the first run: a string, a bool, a float, too many seeds or a bad seed in the list is refused
            (`TypeError` / `ValueError`).
        fast: a smaller budget, for checking that the reproduction runs; verdicts are then only indicative.
        output_dir: where runs keep their files (and where `reproduction.json` / `reproduction.md` are written);
            a temporary folder that is removed afterwards if `None`. An empty string is refused (`ValueError`).
        jobs: how many seeds run at the same time, each in its own process (default 1: one after the other, in this
            process). Every seed is seeded on its own, so the results do not depend on `jobs`; timings measured
            inside a run do (the processes share the machine). When a seed fails, no further seed starts: the
            seeds already running finish, then the failure raises (a seed's process that is killed stops the
            seeds running beside it too: a `RuntimeError` naming them).
        progress: called with one line of text when a seed starts, finishes or fails (the seed, how many have
            started / finished, its own time and the time since the reproduction started); `hf-ext reproduce` prints
            these lines to stderr. The lines come from this process (never from the seeds' worker processes), so
            they are whole lines whatever `jobs` is. Default: no progress lines.
    """
    from .methods import REPRODUCTIONS

    if method not in REPRODUCTIONS:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(REPRODUCTIONS)}.")
    spec = REPRODUCTIONS[method]
    seed_list = _seed_list(spec.default_seeds if seeds is None else seeds)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a positive number of parallel processes, got {jobs!r}.")
    if not isinstance(fast, bool):  # "false" is truthy: it ran the smoke-check budget and reported it as such
        raise TypeError(f"fast must be True or False, got {fast!r}.")
    spec.check_seed_count(len(seed_list), fast)
    if progress is not None and not callable(progress):  # before an earlier report is cleared
        raise TypeError(f"progress must be a callable taking one line of text, or None, got {progress!r}.")
    if output_dir is not None:
        from ..utils.io import ensure_writable_dir

        ensure_writable_dir(output_dir, "--output_dir")  # "" is refused, not taken as "no folder"
        from ..recipes._common import clear_previous_results

        # an earlier report (perhaps "holds") must not look current if this run fails before writing its own
        clear_previous_results(output_dir, ("reproduction.json", "reproduction.md"))
    start = time.perf_counter()
    tracker = _Progress(method, seed_list, progress, start)
    with tempfile.TemporaryDirectory(prefix=f"hf_ext-reproduce-{method}-") as scratch:
        root = scratch if output_dir is None else output_dir
        workdirs = [os.path.join(root, f"seed{seed}") for seed in seed_list]
        # each seed's folder is made when the seed starts: made up front, a failure at the first seed left an empty
        # folder for every other seed in --output_dir (100000 of them for --seeds 100000)
        if jobs == 1 or len(seed_list) == 1:
            per_seed = []
            for seed, workdir in zip(seed_list, workdirs):
                tracker.started(seed)
                try:
                    per_seed.append(_run_seed(spec.run, seed, fast, workdir))
                except BaseException:
                    tracker.failed(seed)
                    raise
                tracker.finished(seed)
        else:
            per_seed = _run_in_processes(spec.run, seed_list, fast, workdirs, jobs, tracker)
        rows = _judge(spec, per_seed)
        report = Report(
            method=method,
            title=spec.title,
            setting=spec.setting_for(fast),
            seeds=seed_list,
            fast=fast,
            rows=rows,
            seconds=time.perf_counter() - start,
            date=datetime.date.today().isoformat(),
            machine=machine_description(),
            per_seed=per_seed,
        )
        if output_dir is not None:
            _write_report(output_dir, report)
    return report


#: the most seeds one reproduction runs: each seed is a whole training run with its own folder, and the report lists
#: every seed, so a count beyond this is a typo (`--seeds 4294967296` built a list of 2**32 seeds, tens of GB, before
#: anything ran); for more, split the seeds over several runs with `--first_seed`
MAX_SEEDS = 10_000

#: the report files `reproduce(output_dir=...)` and `rejudge` write, in the order they are written
REPORT_FILES = ("reproduction.json", "reproduction.md")


def _write_report(output_dir: str, report: Report) -> None:
    """Write `reproduction.json`, then `reproduction.md`, each atomically. An older `reproduction.md` is removed
    first: if a write fails (disk full, a killed process), no `.md` of another judgement is left beside the `.json`
    (a `.json` without its `.md` is complete: `rejudge(output_dir)` writes the `.md` from it)."""
    from ..utils import io

    md = os.path.join(output_dir, "reproduction.md")
    if os.path.isfile(md) or os.path.islink(md):
        os.remove(md)
    io.atomic_write_json(
        os.path.join(output_dir, "reproduction.json"),
        _jsonable({**dataclasses.asdict(report), "verdict": report.verdict}),
    )
    io.atomic_write_text(md, report.to_markdown())


def report_files(output_dir: str | None) -> list[str]:
    """Which of the report files (`REPORT_FILES`) exist in `output_dir` (none without a folder)."""
    if output_dir is None:
        return []
    return [name for name in REPORT_FILES if os.path.isfile(os.path.join(output_dir, name))]


def _seed_list(seeds) -> list[int]:
    """The seeds to run: `range(seeds)` for a count, or the given seeds; every one checked before the first run (a
    bad seed must not cost the full runs of the seeds before it)."""
    from ..utils.checks import is_int

    if is_int(seeds):
        if seeds < 1:
            raise ValueError(f"seeds (--seeds) must be a positive number of seeds, got {seeds!r}.")
        if seeds > 2**32:  # checked before list(range(seeds)): 2**33 seeds took tens of GB, then a MemoryError
            raise ValueError(
                f"seeds must be a non-empty list of integer seeds in [0, 2**32), got a count of {seeds!r} (seeds 0 .. "
                f"{seeds - 1}); a count (--seeds N) runs seeds 0 .. N-1, so N must be at most 2**32."
            )
        _check_seed_count_bound(int(seeds))  # also before list(range(seeds)): 2**32 itself took tens of GB
        return list(range(int(seeds)))
    if hasattr(seeds, "tolist") and getattr(seeds, "ndim", None) == 1:  # a numpy array of seeds
        seeds = seeds.tolist()
    # a string is no list of seeds ("12" ran seeds 1 and 2), nor is a bool a count (True ran one seed)
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence):
        raise TypeError(
            f"seeds (--seeds) must be a positive int (how many seeds: 0 .. N-1) or a list of int seeds, got {seeds!r}."
        )
    if len(seeds) > 2**32:  # e.g. range(2**33): some seed is out of range; found without going through them all
        raise ValueError(f"seeds must be a non-empty list of integer seeds in [0, 2**32), got {len(seeds)} seeds.")
    _check_seed_count_bound(len(seeds))  # before going through them (range(2**32) took minutes to check)
    bad = [s for s in seeds if not is_int(s) or not 0 <= s < 2**32]  # 0.9 was truncated to 0, True became 1
    if bad or not seeds:
        raise ValueError(
            f"seeds must be a non-empty list of integer seeds in [0, 2**32), got {list(seeds)!r}"
            + (f" ({', '.join(map(repr, bad))} is not such a seed)." if bad else ".")
        )
    seed_list = [int(s) for s in seeds]
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct (each seed has its own run folder), got {seed_list}.")
    return seed_list


def _check_seed_count_bound(count: int) -> None:
    """Refuse more than `MAX_SEEDS` seeds, naming `--seeds` and how to run more."""
    if count > MAX_SEEDS:
        raise ValueError(
            f"seeds (--seeds) must be at most {MAX_SEEDS} per reproduction, got {count}: each seed is a whole "
            f"training run with its own folder; to run more, split them over several runs with --first_seed "
            f"(e.g. --seeds {MAX_SEEDS} --first_seed {MAX_SEEDS} runs seeds {MAX_SEEDS} .. {2 * MAX_SEEDS - 1})."
        )


def _judge(spec: Reproduction, per_seed: list[dict]) -> list[Row]:
    rows = []
    for claim in spec.claims:
        ours, ok = claim.judge(per_seed)
        rows.append(Row(claim.name, claim.paper, ours, "holds" if ok else "does not hold", claim.asserted))
    return rows


def rejudge(output_dir: str) -> Report:
    """Judge a finished reproduction again, from the per-seed results in `output_dir/reproduction.json`, with the
    claims as registered now (e.g. after a claim was added); rewrites `reproduction.json` and `reproduction.md`.

    The old `reproduction.md` is removed before the new `reproduction.json` replaces the old one, so a failed write
    never leaves the two files with different verdicts: at worst the `.json` (old or new) is left without a `.md`,
    and calling `rejudge` again writes it."""
    from .methods import REPRODUCTIONS

    path = os.path.join(output_dir, "reproduction.json")
    fields = {f.name for f in dataclasses.fields(Report)} - {"rows", "title", "setting"}
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        # a JSON list or a record without a report's fields failed with a bare TypeError / KeyError
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a JSON {type(saved).__name__}, not a report object")
        missing = sorted(fields - set(saved))
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
        method, per_seed = saved["method"], saved["per_seed"]
        if not isinstance(per_seed, list):
            raise ValueError(f"its per_seed is a JSON {type(per_seed).__name__}, not the list of per-seed results")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a reproduction written by `hf-ext reproduce --output_dir`: {err}") from err
    if not isinstance(method, str) or method not in REPRODUCTIONS:
        raise ValueError(f"{path}: unknown method {method!r}; choose one of {sorted(REPRODUCTIONS)}.")
    spec = REPRODUCTIONS[method]
    setting = spec.setting_for(bool(saved["fast"]))
    bad = next((i for i, run in enumerate(per_seed) if not isinstance(run, dict)), None)
    if bad is not None:
        raise ValueError(
            f"{path} is not a reproduction written by `hf-ext reproduce --output_dir`: its per_seed[{bad}] is a JSON "
            f"{type(per_seed[bad]).__name__}, not a seed's results (an object)."
        )
    rows = []
    for claim in spec.claims:
        try:
            rows += _judge(dataclasses.replace(spec, claims=[claim]), per_seed)
        except (KeyError, IndexError, TypeError) as err:
            # per-seed results of an older version, without a number a claim now reads (a hyperinf folder of
            # 2026-12-02 ended in a bare KeyError 'rank1_widths' naming neither the file nor the claim)
            raise ValueError(
                f"{path}: the claim {claim.name!r} of {method!r} as registered now cannot be judged from these "
                f"per-seed results ({type(err).__name__}: {err}): they were written by an older version of hf_ext, "
                f"before the numbers this claim reads were recorded. Rerun the reproduction (`hf-ext reproduce "
                f"{method} --output_dir ...`) to record them; {path} and its report are left as they were."
            ) from err
    report = Report(**{k: saved[k] for k in fields}, title=spec.title, setting=setting, rows=rows)
    _write_report(output_dir, report)
    return report


def _clock(seconds: float) -> str:
    """`h:mm:ss` of a duration in seconds."""
    whole = int(max(seconds, 0.0))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class _Progress:
    """The progress lines of a reproduction: one per seed started, finished or failed, sent to `report` (nothing
    when it is `None`). Each line names the seed, the counts so far, the seed's own time and the elapsed time."""

    def __init__(self, method: str, seeds: list[int], report: Callable[[str], None] | None, start: float):
        self.method, self.total, self.report, self.start = method, len(seeds), report, start
        self.began: dict[int, float] = {}
        self.done = 0

    def _emit(self, text: str) -> None:
        if self.report is not None:
            elapsed = _clock(time.perf_counter() - self.start)
            self.report(f"hf-ext reproduce {self.method}: {text} [elapsed {elapsed}]")

    def _took(self, seed: int) -> str:
        return _clock(time.perf_counter() - self.began.get(seed, self.start))

    def started(self, seed: int) -> None:
        self.began[seed] = time.perf_counter()
        running = len(self.began) - self.done
        self._emit(f"seed {seed} started ({len(self.began)}/{self.total} started, {running} running)")

    def finished(self, seed: int) -> None:
        self.done += 1
        self._emit(f"seed {seed} finished in {self._took(seed)} ({self.done}/{self.total} done)")

    def failed(self, seed: int) -> None:
        self._emit(f"seed {seed} failed after {self._took(seed)} ({self.done}/{self.total} done); no further seed starts")


def _run_seed(run: Callable, seed: int, fast: bool, workdir: str) -> dict:
    """One seed's run in this process, in its own folder (made now)."""
    os.makedirs(workdir, exist_ok=True)
    return run(seed, fast, workdir)


def _run_in_processes(
    run: Callable, seeds: list[int], fast: bool, workdirs: list[str], jobs: int, tracker: _Progress | None = None
) -> list[dict]:
    """Run the seeds in up to `jobs` fresh ("spawn") processes; results come back in seed order. `run` must be a
    module-level function (it is sent to the workers by name).

    At most `jobs` seeds are handed to the pool at a time, the next one only when a seed has finished and none has
    failed: `ProcessPoolExecutor` moves submitted items into its call queue ahead of time, where `cancel_futures`
    cannot reach them, so seeds submitted up front still started after a failure. After the first failure no seed
    starts; the ones already running finish (a worker cannot be interrupted), then the failure raises. A worker that
    dies (killed, or a crash in native code) breaks the pool, which stops every worker: that is a `RuntimeError`
    naming the seeds that were running, none of whose results are kept. `tracker` (this process) reports each seed
    started, finished or failed."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads or a CUDA context
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=ctx)
    results: list = [None] * len(seeds)
    waiting = iter(range(len(seeds)))
    running: dict = {}
    tracker = tracker or _Progress("", seeds, None, time.perf_counter())

    def start_next() -> None:
        i = next(waiting, None)
        if i is not None:
            os.makedirs(workdirs[i], exist_ok=True)
            running[pool.submit(run, seeds[i], fast, workdirs[i])] = i
            tracker.started(seeds[i])

    try:
        for _ in range(min(jobs, len(seeds))):
            start_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            try:
                for future in done:  # a failure among them raises before any further seed is submitted
                    if future.exception() is not None and not isinstance(future.exception(), BrokenProcessPool):
                        tracker.failed(seeds[running[future]])
                    future.result()
            except BrokenProcessPool as err:
                # a worker killed (the out-of-memory killer, a signal) or crashed in native code: the pool stops
                # every worker, so the seeds running beside it are lost too; the pool's message named no seed
                lost = sorted(seeds[i] for i in running.values())
                raise RuntimeError(
                    f"The process of one of the seeds {lost} ended abruptly (killed, e.g. by the out-of-memory "
                    f"killer, or crashed in native code) and the process pool stopped all of them: no result of "
                    f"these seeds was kept. Rerun (fewer --jobs if memory ran out); each seed runs afresh."
                ) from err
            for future in done:
                i = running.pop(future)
                results[i] = future.result()
                tracker.finished(seeds[i])
                start_next()
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a failure: waits for the seeds still running


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: repr(o)))
