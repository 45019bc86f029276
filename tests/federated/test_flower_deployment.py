"""A real Flower deployment on 127.0.0.1: a SuperLink and two SuperNodes started as separate processes with Flower's
own CLI (insecure mode), `flwr run` of examples/flower_app (2 rounds of LoRA FedAvg with SecAgg+ and DP-SGD on the
embedded corpus), and the final adapter compared with the in-process simulation of the same task. Every process the
test starts is stopped, also when it fails."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
# "dp-noise-seed": reproducible DP noise (opt-in, voids the guarantee) so that the deployment equals the simulation;
# the SuperNodes accept a server-chosen seed only with `--node-config "dp-allow-server-noise-seed=true"`
RUN_CONFIG = {
    "num-server-rounds": 2,
    "dp-clip-norm": 1.0,
    "dp-noise-multiplier": 0.5,
    "dp-noise-seed": 0,
    "secure-aggregation": True,
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, procs, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited early with code {p.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # the command may contain spaces and parentheses
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pids) -> set[int]:
    children, out, todo = _children_map(), set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop(procs) -> None:
    """Stop every process the test started and all their descendants. The SuperLink starts `flower-superexec` /
    `flwr-serverapp` (and a SuperNode its `flwr-clientapp`s) in process groups of their own, so killing a process
    group can leave them orphaned: the descendants are collected from /proc before anything is signalled (an orphan
    is re-parented and cannot be found afterwards) and each is signalled by pid."""
    running = [p for p in procs if p.poll() is None]
    tree = _descendants([p.pid for p in running])
    _signal([p.pid for p in running] + sorted(tree), signal.SIGTERM)
    deadline = time.time() + 15
    for p in running:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    while time.time() < deadline and any(_alive(pid) for pid in tree):
        time.sleep(0.2)
    tree |= _descendants([p.pid for p in running if p.poll() is None])  # anything started during the shutdown
    _signal([p.pid for p in running if p.poll() is None] + sorted(pid for pid in tree if _alive(pid)), signal.SIGKILL)
    for p in running:
        p.wait(timeout=5)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'"
    return repr(v)


@pytest.mark.slow
def test_flower_deployment_secaggplus_dp_equals_in_process(tmp_path):
    pytest.importorskip("flwr")
    from safetensors.torch import load_file

    from hf_ext.federated import FederatedSimulation
    from hf_ext.federated.flower_task import task_from_run_config

    home = tmp_path / "flwr_home"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    out = tmp_path / "global.safetensors"
    run_config = {**RUN_CONFIG, "output-path": str(out), "work-dir": str(tmp_path / "work")}
    bindir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("superlink", "node0", "node1", "run")}
    procs = []

    def start(name, *args):
        p = subprocess.Popen(
            [os.path.join(bindir, args[0]), *args[1:]],
            env=env,
            cwd=tmp_path,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        return p

    try:
        start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        )
        _wait_port(port, procs)
        for pid in (0, 1):
            start(
                f"node{pid}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={pid} num-partitions=2 dp-allow-server-noise-seed=true",
            )
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        submit = subprocess.run(
            [os.path.join(bindir, "flwr"), "run", str(APP_DIR), "local-test", "--run-config", overrides],
            env=env,
            cwd=tmp_path,
            stdout=logs["run"],
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        assert submit.returncode == 0, (tmp_path / "run.log").read_text()
        deadline = time.time() + 600
        while not out.exists() and time.time() < deadline:
            for p in procs:
                assert p.poll() is None, f"{p.args[0]} died: see {tmp_path}"
            time.sleep(2)
        assert out.exists(), (
            "the ServerApp wrote no result in 10 minutes:\n" + (tmp_path / "superlink.log").read_text()
        )
    finally:
        _stop(procs)
        for fh in logs.values():
            fh.close()
    assert all(p.poll() is not None for p in procs)
    deployed = load_file(str(out))

    task = task_from_run_config(run_config)
    sim = FederatedSimulation(
        task.model_fn(), [task.dataset_fn(i) for i in range(task.num_clients)], task.fed_args, task.training_args
    )
    start_state = {k: v.clone() for k, v in sim.global_state.items()}
    sim.run()
    assert set(deployed) == set(sim.global_state)
    moved = max(float((sim.global_state[k] - start_state[k]).abs().max()) for k in start_state)
    assert moved > 1e-3  # training did change the adapter
    for k, v in sim.global_state.items():
        # SecAgg+ quantizes each weighted update to 2**22 levels over [-8, 8] (stochastic rounding)
        torch.testing.assert_close(deployed[k], v, atol=5e-4, rtol=0)
