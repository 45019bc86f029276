"""Shared fixtures: offline mode, a per-session cache, the embedded corpus and tokenizer."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _heavy_imports_out_of_the_collectors_sight():
    """`Trainer.train()` ends with accelerate's `free_memory()`, a full `gc.collect()`: with torch, transformers,
    datasets and peft imported, a test process tracks ~0.5 M objects and each collection costs 0.3-0.6 s, paid by
    every training run of the session. Those modules' objects live until the process exits, so they are imported
    once and frozen (`gc.freeze`): later collections scan only what the tests create."""
    import gc

    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def corpus():
    """The embedded corpus, train split."""
    from hf_ext.data import load_corpus

    return load_corpus("train")


@pytest.fixture(scope="session")
def corpus_test():
    from hf_ext.data import load_corpus

    return load_corpus("test")


@pytest.fixture(scope="session")
def tokenizer():
    """Byte-level BPE with 4096 tokens trained on the corpus (cached across sessions)."""
    from hf_ext.data import build_tokenizer

    return build_tokenizer(4096)


@pytest.fixture(scope="session")
def small_tokenizer():
    """Byte-level BPE with 512 tokens: for tests where a small embedding matters."""
    from hf_ext.data import build_tokenizer

    return build_tokenizer(512)


def _pick_free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_failure_excerpt(stderr: str, tail: int = 3000, per_rank: int = 2500) -> str:
    """What a failed `torchrun` printed that explains it, for an assertion message: each rank's last traceback (the
    lines torch prefixes with `[rankN]:`, the last `per_rank` characters of each), any C++ abort line (`terminate
    called ...`, `what(): ...`), then the last `tail` characters of stderr. A plain tail is not enough: a rank that
    died first (SIGABRT after an exception) printed its reason before the other rank's connection-reset traceback and
    the launcher's summary filled the tail. A launch that runs several checks in turn names each on stderr as it
    starts (a line `<script>: <check>`, e.g. `two_rank_checks: tp_fog`); the last such lines come first, so the
    message says which check a failure happened in however long its traceback."""
    import re

    stderr = stderr or ""
    by_rank: dict[str, list[str]] = {}
    aborts = []
    checks = [
        line
        for line in stderr.splitlines()
        if re.match(r"(\[rank\d+\]:)?\s*(two_rank_checks|ddp_grape_all|ddp_checks|scale_out_all): \S", line)
    ]
    for line in stderr.splitlines():
        match = re.match(r"\[rank(\d+)\]:", line)
        if match:
            lines = by_rank.setdefault(match.group(1), [])
            if line[match.end() :].lstrip().startswith("Traceback"):
                lines.clear()  # keep each rank's last traceback
            lines.append(line)
        if "terminate called" in line or "what():" in line:
            aborts.append(line)
    parts = []
    if checks:
        parts.append("--- checks started (each rank's last is the one it failed in) ---\n" + "\n".join(checks[-8:]))
    parts += [
        f"--- rank {rank}, last traceback ---\n" + "\n".join(lines)[-per_rank:]
        for rank, lines in sorted(by_rank.items())
    ]
    if aborts:
        parts.append("--- aborts ---\n" + "\n".join(aborts[:10]))
    parts.append("--- stderr tail ---\n" + stderr[-tail:])
    return "\n".join(parts)


_SHARED_LAUNCHES: dict = {}


def shared_launch(tmp_path_factory, key, launch):
    """`launch(folder)` -> `CompletedProcess`, run once per test session and recorded as a dict (`folder`,
    `returncode`, `stdout`, `stderr`). Under pytest-xdist the workers share it: the first to need it launches under a
    file lock in the run's common temporary folder, the others wait for the lock and read its record."""
    if key in _SHARED_LAUNCHES:
        return _SHARED_LAUNCHES[key]
    try:
        import fcntl
    except ImportError:  # no file locks: each worker launches its own
        fcntl = None

    def run(folder):
        folder.mkdir()
        res = launch(folder)
        return dict(folder=str(folder), returncode=res.returncode, stdout=res.stdout, stderr=res.stderr)

    if os.environ.get("PYTEST_XDIST_WORKER") is None or fcntl is None:
        record = run(tmp_path_factory.mktemp(key, numbered=True) / "out")
    else:
        root = tmp_path_factory.getbasetemp().parent  # shared by this run's workers (and only by them)
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = root / f"{key}.json"
            if path.exists():
                record = json.loads(path.read_text())
            else:
                record = run(root / key)
                path.write_text(json.dumps(record))
    _SHARED_LAUNCHES[key] = record
    return record


def two_rank_check_result(record, check, checks, launch_failure):
    """`(folder, stdout)` of `check` in a checks_in_turn.py launch: its output folder and the part of the launch's
    stdout that it printed. Fails, naming the check, unless both ranks finished it (each writes `passed.rank<r>`);
    once every one of `checks` finished on both ranks, the launch itself must have exited with 0 (a rank that aborts
    at exit, after its checks, fails them all)."""
    from pathlib import Path

    def passed(name):
        return all((Path(record["folder"]) / name / f"passed.rank{rank}").exists() for rank in (0, 1))

    folder = Path(record["folder"]) / check
    if all(passed(c) for c in checks):
        assert record["returncode"] == 0, (
            f"every two-rank check of the launch passed, but the launch exited with {record['returncode']}:\n"
            + launch_failure(record["stderr"])
        )
    elif not passed(check):
        started = f"two_rank_checks: {check}\n" in record["stderr"]
        pytest.fail(
            f"the two-rank check {check!r} "
            + ("did not pass on both ranks" if started else "was not reached (an earlier check of the launch failed)")
            + f" (launch exit code {record['returncode']}; each check prints 'two_rank_checks: <name>' to stderr as it "
            f"starts):\n{launch_failure(record['stderr'])}"
        )
    stdout = record["stdout"]
    start = stdout.index(f"two_rank_checks: {check}\n")
    later = [stdout.find(f"two_rank_checks: {c}\n", start) for c in checks[checks.index(check) + 1 :]]
    end = min([i for i in later if i >= 0], default=len(stdout))
    return folder, stdout[start:end]


@pytest.fixture
def two_rank_checks_launch(tmp_path_factory, launch_failure):
    """`two_rank_checks_launch(key, launch, checks)` -> `result(check)`: a folder's `scripts/two_rank_checks.py`
    launch (`launch(folder)` -> `CompletedProcess`), run once per test session for `key` and shared by the modules
    and pytest-xdist workers that read it (`shared_launch`); `result(check)` is `(folder, stdout)` of one of `checks`,
    and fails, naming the check, unless both ranks finished it (`two_rank_check_result`). A launch costs each rank
    ~10-15 s of imports; several checks of one subsystem share one."""

    def make(key, launch, checks):
        record = shared_launch(tmp_path_factory, key, launch)
        return lambda check: two_rank_check_result(record, check, checks, launch_failure)

    return make


@pytest.fixture
def checks_in_turn_launch(two_rank_checks_launch, repo_root, run_on_free_port):
    """`checks_in_turn_launch(key, subsystem, checks, recipe=(), timeout=900)` -> `result(check)` (see
    `two_rank_checks_launch`): ONE `torchrun --nproc_per_node 2` launch per test session of
    tests/scripts/checks_in_turn.py, which runs the scripts `checks` of tests/<subsystem>/scripts in turn, and, for a
    last check named `recipe`, the recipe module and arguments `recipe` (the fp8, fog and layer_parallel checks)."""
    import sys

    script = os.path.join(repo_root, "tests", "scripts", "checks_in_turn.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root, "HF_HUB_OFFLINE": "1"}

    def make(key, subsystem, checks, recipe=(), timeout=900):
        scripts = os.path.join(repo_root, "tests", subsystem, "scripts")
        tail = ["--", *recipe] if recipe else []

        def launch(folder):
            return run_on_free_port(
                lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                              str(port), script, scripts, str(folder), *checks, *tail],
                cwd=repo_root, timeout=timeout, env=env,
            )  # fmt: skip

        return two_rank_checks_launch(key, launch, checks)

    return make


@pytest.fixture
def in_turn_outcome(launch_failure):
    """`in_turn_outcome(proc, name, checks)`: for a launch whose checks ran in turn under `in_turn`
    (tests/scripts/in_turn.py: rank 0 prints `[two_rank_checks] start NAME` / `done NAME`), fail naming the check the
    launch stopped in unless `name` finished on both ranks; once every one of `checks` finished, the launch itself must
    have exited with 0."""
    import re

    mark = re.escape("[two_rank_checks]")

    def outcome(proc, name, checks):
        assert name in checks, name
        started = re.findall(rf"^{mark} start (\S+)$", proc.stdout, re.M)
        done = re.findall(rf"^{mark} done (\S+)$", proc.stdout, re.M)
        if name not in done:
            stopped = next((n for n in started if n not in done), "none (before the first)")
            pytest.fail(
                f"2-rank check {name} did not finish: the launch (exit {proc.returncode}) stopped in check {stopped}\n"
                + launch_failure(proc.stderr)
            )
        if set(done) == set(checks):  # every check finished: the launch itself must end cleanly too
            assert proc.returncode == 0, launch_failure(proc.stderr)

    return outcome


#: how many ports a launch tries before its port-in-use failure stands
PORT_TRIES = 3


def lost_its_port(res) -> bool:
    """Whether a finished `torchrun` / `accelerate launch` failed because its `--master_port` was taken: the launcher's
    TCPStore could not listen on it (torch: `... name: EADDRINUSE, message: address already in use`)."""
    return res.returncode != 0 and "EADDRINUSE" in (res.stderr or "")


def _run_on_free_port(make_cmd, **run_kwargs):
    """`subprocess.run(make_cmd(port), capture_output=True, text=True, **run_kwargs)` on a port the OS reports free on
    127.0.0.1. The port is free when chosen, not when the launcher binds it seconds later: in that window another process (under
    pytest-xdist, the other worker's launcher or its gloo sockets) may take it, and the launch then fails at once with
    EADDRINUSE before any rank starts. Such a launch is retried on a new port (`PORT_TRIES` in all); any other
    outcome is returned as it is."""
    import subprocess

    for _ in range(PORT_TRIES):
        res = subprocess.run(make_cmd(_pick_free_port()), capture_output=True, text=True, **run_kwargs)
        if not lost_its_port(res):
            break
    return res


@pytest.fixture
def launch_failure():
    """`launch_failure(stderr)`: the assertion message for a failed launch (`launch_failure_excerpt`)."""
    return launch_failure_excerpt


@pytest.fixture
def run_on_free_port():
    """`run_on_free_port(make_cmd, **run_kwargs)`: run a launcher command built by `make_cmd(port)` on a free port
    (a fixed or counter-based port collides with other runs on the same machine), again on a new port if it lost that
    one before binding it; see `_run_on_free_port`."""
    return _run_on_free_port


@pytest.fixture
def run_two_ranks(repo_root):
    """`run_two_ranks(script, *args)`: run `script` (a path relative to the repository) under
    `torchrun --nproc_per_node 2` on a free port (`run_on_free_port`), one thread per rank, and assert it exited with
    0 (stderr's tail otherwise; `check=False` skips that, for a launch that must fail). Returns the
    `CompletedProcess`."""
    import sys

    def run(script, *args, timeout=600, check=True):
        def cmd(port):
            return [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                os.path.join(repo_root, script), *map(str, args),
            ]  # fmt: skip

        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}
        res = _run_on_free_port(cmd, cwd=repo_root, timeout=timeout, env=env)
        assert not check or res.returncode == 0, launch_failure_excerpt(res.stderr)
        return res

    return run


@pytest.fixture
def remote_code_logits_without_hf_ext(tmp_path):
    """`remote_code_logits_without_hf_ext(folder, ids, expected, **load_kwargs)` -> `(class name, module)`: in a fresh
    process where importing hf_ext raises, `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True,
    **load_kwargs)` loads the folder through its own code and gives `expected` logits for `ids` (1e-5: the other
    process may use another thread count). What plain transformers or the lm-eval CLI needs of a saved folder."""
    import subprocess
    import sys

    import torch

    def check(folder, ids, expected, **load_kwargs):
        case = tmp_path / "remote_code_case.pt"
        torch.save({"ids": ids, "expected": expected, "kwargs": load_kwargs}, case)
        code = (
            "import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'hf_ext' or name.startswith('hf_ext.'): raise ImportError('hf_ext blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import torch\n"
            "from transformers import AutoModelForCausalLM\n"
            f"case = torch.load({str(case)!r})\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True, **case['kwargs']).eval()\n"
            "assert 'hf_ext' not in sys.modules, 'hf_ext was imported'\n"
            "with torch.no_grad(): out = m(case['ids']).logits\n"
            "torch.testing.assert_close(out, case['expected'], rtol=1e-5, atol=1e-5)\n"
            "print('OK', type(m).__name__, type(m).__module__)\n"
        )
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "remote_code_modules")}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ok, name, module = proc.stdout.split()[:3]
        assert ok == "OK", proc.stdout
        return name, module

    return check


@pytest.fixture
def interrupt_after_step():
    """`interrupt_after_step(n)`: a `TrainerCallback` that raises `KeyboardInterrupt` once, at the end of optimizer
    step `n` (a run stopped by Ctrl-C, e.g. in a notebook), so a test can resume the same trainer object."""
    from transformers import TrainerCallback

    class InterruptAfterStep(TrainerCallback):
        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if self.step == state.global_step:
                self.step = None
                raise KeyboardInterrupt

    return InterruptAfterStep


@pytest.fixture
def out_of_memory_once():
    """`out_of_memory_once(TrainerClass)`: a subclass whose `training_step` raises a simulated CUDA out-of-memory
    error once, after the batch's forward (as a batch too large for its backward does), at optimizer step
    `trainer.oom_at + 1`; with `auto_find_batch_size=True` Trainer then reruns its training loop with a smaller batch
    within the same `train()` call. The rerun starts from the weights, RNG state and a fresh optimizer as the failed
    attempt did (Trainer itself keeps the failed attempt's), so a test can compare what the trainer and its callbacks
    record with a run started directly at the smaller batch size."""
    import copy

    import torch

    def make(trainer_cls):
        class OutOfMemoryOnce(trainer_cls):
            oom_at = None

            def train(self, *args, **kwargs):
                self._attempt_start = None
                return super().train(*args, **kwargs)

            def _inner_training_loop(self, *args, **kwargs):
                if self._attempt_start is None:
                    self._attempt_start = (copy.deepcopy(self.model.state_dict()), torch.get_rng_state())
                else:
                    weights, rng = self._attempt_start
                    self.model.load_state_dict(weights)
                    torch.set_rng_state(rng)
                    self.optimizer = self.lr_scheduler = None
                return super()._inner_training_loop(*args, **kwargs)

            def training_step(self, model, inputs, num_items_in_batch=None):
                if self.oom_at is not None and self.state.global_step == self.oom_at:
                    self.oom_at = None
                    with torch.no_grad():
                        model(**self._prepare_inputs(inputs))
                    raise RuntimeError("CUDA out of memory. (simulated)")
                return super().training_step(model, inputs, num_items_in_batch)

        return OutOfMemoryOnce

    return make
