"""The two-rank launch helpers of tests/conftest.py: a launch that lost its free port before binding it runs again on a
new port. The port is chosen free (bind to port 0, then closed) seconds before `torchrun` binds it; under
pytest-xdist the other worker's launcher or gloo sockets could take it in between, and the test then failed at once
with `EADDRINUSE` (fl17; a held port reproduces it: `torchrun --master_port <held>` exits 1 before any rank starts)."""

import socket
import subprocess

import pytest


class _FakeRun:
    """Stands in for `subprocess.run`: answers each call with the next of `outcomes` (returncode, stderr)."""

    def __init__(self, outcomes):
        self.outcomes, self.ports = list(outcomes), []

    def __call__(self, cmd, **kwargs):
        assert kwargs["capture_output"] and kwargs["text"] and kwargs["timeout"] == 5
        self.ports.append(int(cmd[-1]))
        code, err = self.outcomes.pop(0)
        return subprocess.CompletedProcess(cmd, code, "", err)


_IN_USE = (1, "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
              "address. port: 4242, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use")  # fmt: skip


def _launch(run_on_free_port):
    return run_on_free_port(lambda port: ["torchrun", "--master_port", str(port)], timeout=5)


def test_a_launch_that_lost_its_port_runs_again_on_a_new_port(monkeypatch, run_on_free_port):
    fake = _FakeRun([_IN_USE, (0, "")])
    monkeypatch.setattr(subprocess, "run", fake)
    assert _launch(run_on_free_port).returncode == 0
    assert len(fake.ports) == 2 and fake.ports[0] != fake.ports[1]


def test_other_failures_are_not_retried_and_a_port_lost_every_time_fails(monkeypatch, run_on_free_port):
    fake = _FakeRun([(1, "ValueError: --max_steps must be positive")])
    monkeypatch.setattr(subprocess, "run", fake)
    res = _launch(run_on_free_port)
    assert (res.returncode, len(fake.ports)) == (1, 1) and "--max_steps" in res.stderr  # a refusal stays as it is
    fake = _FakeRun([_IN_USE] * 3)
    monkeypatch.setattr(subprocess, "run", fake)
    res = _launch(run_on_free_port)
    assert res.returncode == 1 and "EADDRINUSE" in res.stderr and len(fake.ports) == 3


def test_torch_names_a_taken_store_port_eaddrinuse():
    """The text the retry looks for is what torch raises when the launcher's TCPStore cannot listen on its port."""
    import torch.distributed as dist

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        with pytest.raises(Exception, match="EADDRINUSE"):
            dist.TCPStore("127.0.0.1", held.getsockname()[1], is_master=True, wait_for_workers=False)


_RANK0_FAILS = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 0:
    raise ValueError("rank zero failed here")
dist.all_reduce(torch.ones(3))  # rank 1 waits for a peer that is gone
"""


def test_failure_excerpt_names_the_rank_that_failed_first(tmp_path, run_two_ranks, launch_failure):
    """A rank that fails alone leaves its peer inside a collective; the peer's connection-reset traceback and the
    launcher's report come last on stderr. The assertion message still shows the first rank's own error, also when
    more than the tail's worth of output follows it (the stderr tail alone showed only rank 1's side)."""
    script = tmp_path / "rank0_fails.py"
    script.write_text(_RANK0_FAILS)
    res = run_two_ranks(str(script), check=False, timeout=300)
    assert res.returncode != 0
    padded = res.stderr + "\n" + "launcher noise\n" * 1000
    excerpt = launch_failure(padded)
    assert "ValueError: rank zero failed here" in excerpt
    assert "ValueError: rank zero failed here" not in padded[-4000:]


def test_failure_excerpt_names_the_check_a_merged_launch_failed_in(launch_failure):
    """rv25 F2: a launch that runs several checks in turn names each on stderr as it starts; a check's traceback longer
    than what the excerpt keeps of it cut that name off, so the message did not say which check failed. The names
    (the last few) now come first."""
    frames = "\n".join(f'[rank1]:   File "deep.py", line {i}, in f{i}' for i in range(400))
    noise = "launcher noise\n" * 500
    stderr = (
        "two_rank_checks: tp_fog\nddp_grape_all: resume\nunrelated: line\n"
        f"[rank1]: Traceback (most recent call last):\n{frames}\n[rank1]: AssertionError: shards differ\n{noise}"
    )
    excerpt = launch_failure(stderr)
    assert excerpt.startswith("--- checks started")
    head = excerpt.split("--- rank 1")[0]
    assert "two_rank_checks: tp_fog" in head and "ddp_grape_all: resume" in head and "unrelated" not in head
    assert "AssertionError: shards differ" in excerpt
    assert not launch_failure("no markers\n").startswith("--- checks started")


def test_in_turn_outcome_names_the_check_a_launch_stopped_in(in_turn_outcome):
    """A launch whose checks ran in turn (tests/scripts/in_turn.py marks each on rank 0's stdout): a check that
    finished passes, one that did not fails naming the check the launch stopped in, and a launch that finished every
    check must still have exited with 0."""
    import subprocess

    stopped = subprocess.CompletedProcess(
        [], 1, "[two_rank_checks] start a\n[two_rank_checks] done a\n[two_rank_checks] start b\n", "[rank1]: boom\n"
    )
    in_turn_outcome(stopped, "a", ("a", "b", "c"))
    for name in ("b", "c"):
        with pytest.raises(pytest.fail.Exception, match=rf"2-rank check {name} did not finish: .*stopped in check b"):
            in_turn_outcome(stopped, name, ("a", "b", "c"))
    finished = subprocess.CompletedProcess([], 1, "[two_rank_checks] start a\n[two_rank_checks] done a\n", "")
    with pytest.raises(AssertionError):
        in_turn_outcome(finished, "a", ("a",))


def test_a_shared_launch_that_exits_nonzero_after_every_check_passed_fails_them(two_rank_checks_launch):
    """rv26 F2: the fp8 / fog / layer_parallel shared launches read only each check's `passed.rank<r>` files, so a
    launch whose ranks aborted at exit after every check passed (exit code 1) still passed every test (the separate
    launches they replaced asserted exit code 0)."""
    import subprocess

    checks = ("a", "b")
    stdout = "two_rank_checks: a\nout a\ntwo_rank_checks: b\nout b\n"

    def launch(returncode, passed_on_rank1):
        def run(folder):
            for name in checks:
                (folder / name).mkdir()
                for rank in (0, 1) if name in passed_on_rank1 else (0,):
                    (folder / name / f"passed.rank{rank}").touch()
            return subprocess.CompletedProcess([], returncode, stdout, stdout + "terminate called\n" * returncode)

        return run

    clean = two_rank_checks_launch("rv26_probe_clean", launch(0, checks), checks)
    folder, out = clean("a")
    assert out == "two_rank_checks: a\nout a\n" and (folder / "passed.rank1").exists()
    aborted = two_rank_checks_launch("rv26_probe_aborted", launch(1, checks), checks)
    for name in checks:
        with pytest.raises(AssertionError, match="every two-rank check of the launch passed, but the launch exited"):
            aborted(name)
    failed_b = two_rank_checks_launch("rv26_probe_failed_b", launch(1, ("a",)), checks)
    assert failed_b("a")[1] == "two_rank_checks: a\nout a\n"  # a passed; b fails naming itself
    with pytest.raises(pytest.fail.Exception, match="the two-rank check 'b' did not pass on both ranks"):
        failed_b("b")
