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
