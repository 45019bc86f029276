"""scripts/gpu_check.sh --tiny: the one-shot GPU check runs its three stages on CPU and prints one JSON summary."""

import json
import os
import subprocess
import sys


def test_gpu_check_tiny_prints_one_json_summary(tmp_path, repo_root):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}
    res = subprocess.run(
        ["bash", os.path.join(repo_root, "scripts", "gpu_check.sh"), "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=1900, env=env, cwd=str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["tiny"] is True and summary["ok"] is True, summary
    assert set(summary["stages"]) == {"gpu_tests", "bench_fp8", "bench_layer_parallel"}
    assert summary["stages"]["gpu_tests"]["counts"]["failures"] == 0
    # Every test file with gpu-marked tests was collected (a file that fails to import would be named here).
    assert summary["stages"]["gpu_tests"]["not_collected"] == []
    assert summary["stages"]["gpu_tests"]["counts"]["tests"] >= 10
    env = summary["environment"]
    assert env["torch"] and env["transformers"] and env["hf_ext"] and not env["hf_ext"].startswith("unavailable")
    fp8 = summary["stages"]["bench_fp8"]["summary"]
    assert {"llama/bf16", "fog/bf16", "llama/fp8_tensorwise", "fog/fp8_tensorwise"} == set(fp8["tokens_per_s"])
    assert fp8["fog_fp8_vs_fog_bf16"] > 0 and fp8["fog_bf16_vs_llama_bf16"] > 0
    assert summary["stages"]["bench_layer_parallel"]["rows"]


def test_gpu_check_rejects_unknown_arguments(repo_root):
    res = subprocess.run(["bash", os.path.join(repo_root, "scripts", "gpu_check.sh"), "--fast"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "unknown argument '--fast'" in res.stderr


def test_gpu_check_wheels_folder_without_wheels_is_a_clear_error(tmp_path, repo_root):
    res = subprocess.run(["bash", os.path.join(repo_root, "scripts", "gpu_check.sh"), "--wheels", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert "holds no .whl files" in res.stderr and "gpu_wheels.sh" in res.stderr


def test_gpu_check_stages_runs_only_the_named_stage_with_its_limit(tmp_path, repo_root):
    """`--stages bench_layer_parallel --limit bench_layer_parallel=300`: one stage, its limit, a summary of it alone
    (logs of an earlier full run in the same folder are not reported as this run's)."""
    out = tmp_path / "gpu_check"
    out.mkdir()
    (out / "bench_fp8.log").write_text('{"model": "summary", "stale": true}\n')  # an earlier run's log
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root}
    res = subprocess.run(
        ["bash", os.path.join(repo_root, "scripts", "gpu_check.sh"), "--tiny", "--out", str(out),
         "--stages", "bench_layer_parallel", "--limit", "bench_layer_parallel=300"],
        capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(summary["stages"]) == {"bench_layer_parallel"} and summary["ok"] is True
    assert summary["stages"]["bench_layer_parallel"]["limit_s"] == 300
    assert summary["stages"]["bench_layer_parallel"]["rows"]


def test_gpu_check_rejects_bad_stages_and_limits(repo_root):
    script = os.path.join(repo_root, "scripts", "gpu_check.sh")
    for args, message in (
        (["--stages", "bench_fp9"], "unknown stage 'bench_fp9'"),
        (["--stages", ","], "unknown stage ''"),
        (["--limit", "bench_fp8=0"], "--limit 'bench_fp8=0'"),
        (["--limit", "bench_fp8=ten"], "--limit 'bench_fp8=ten'"),
        (["--limit", "tests=60"], "--limit 'tests=60'"),
        (["--limit", "bench_fp8"], "--limit 'bench_fp8'"),
    ):
        res = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
        assert "bad array subscript" not in res.stderr
