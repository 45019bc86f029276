#!/usr/bin/env bash
# One-shot GPU check for FOG / FP8 / layer parallelism (issue 15, item 9).
#
# On one H100 / H200 with torchao installed it runs, each under its own time limit (about 8.5 minutes in all):
#   1. the gpu-marked tests          (python -m pytest -m gpu tests)
#   2. scripts/bench_fp8.py           at its GPU defaults (8B width, 8 layers, Llama and FOG, BF16 and torchao FP8)
#   3. scripts/bench_layer_parallel.py at its GPU defaults
# and prints ONE JSON summary line on stdout (also written to OUT/summary.json); the logs stay in OUT.
# `--tiny` runs the same three stages on CPU at smoke size (the gpu tests then skip; the benchmarks time as few steps and
# tokens as they need, the layer-parallel one without its CPU-only control model), to check the script itself.
# hf_ext is imported from this checkout (no install needed). `--wheels DIR` first installs DIR/*.whl into a private
# folder put ahead on PYTHONPATH (no index, no dependencies): for a machine without network whose Python lacks
# torchao or has an older transformers; scripts/gpu_wheels.sh downloads the set.
# Only the test files that hold gpu-marked tests are collected; a file that does not import (a missing optional
# package) is reported in the summary and does not stop the others.
#
#   scripts/gpu_check.sh                  # on the GPU machine, from the repository root
#   scripts/gpu_check.sh --wheels .whl    # the same, with the wheels of scripts/gpu_wheels.sh
#   scripts/gpu_check.sh --tiny --out /tmp/gpu_check
# `--stages LIST` runs only the named stages (comma list of gpu_tests, bench_fp8, bench_layer_parallel; default all)
# and `--limit NAME=SECONDS` changes one stage's time limit, e.g. to spend a short GPU loan on the stage still missing:
#   scripts/gpu_check.sh --wheels .whl --stages bench_layer_parallel --limit bench_layer_parallel=480
set -u -o pipefail

TINY=0
OUT="gpu_check_out"
WHEELS=""
STAGES="gpu_tests,bench_fp8,bench_layer_parallel"
declare -A LIMIT=([gpu_tests]=150 [bench_fp8]=270 [bench_layer_parallel]=90)  # measured on an H200: 134 s, 244 s, >90 s
declare -A LIMIT_SET=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder of .whl files}"; shift 2 ;;
    --stages) STAGES="${2:?--stages needs a comma list of gpu_tests, bench_fp8, bench_layer_parallel}"; shift 2 ;;
    --limit)
      spec="${2:?--limit needs NAME=SECONDS, e.g. bench_layer_parallel=480}"
      name="${spec%%=*}"; secs="${spec#*=}"
      if [ -z "$name" ] || [ -z "${LIMIT[$name]+x}" ] || ! [[ "$secs" =~ ^[1-9][0-9]*$ ]] || [ "$name" = "$spec" ]; then
        echo "gpu_check.sh: --limit '$spec': give NAME=SECONDS with NAME one of gpu_tests, bench_fp8, bench_layer_parallel and SECONDS a positive integer" >&2
        exit 2
      fi
      LIMIT_SET[$name]="$secs"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --tiny, --out DIR, --wheels DIR, --stages LIST, --limit NAME=SECONDS)" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a STAGE_LIST <<< "$STAGES"
if [ "${#STAGE_LIST[@]}" -eq 0 ]; then
  echo "gpu_check.sh: --stages '$STAGES' names no stage; use a comma list of gpu_tests, bench_fp8, bench_layer_parallel" >&2
  exit 2
fi
declare -A RUN=()
for name in "${STAGE_LIST[@]}"; do
  if [ -z "$name" ] || [ -z "${LIMIT[$name]+x}" ]; then
    echo "gpu_check.sh: --stages: unknown stage '$name'; use a comma list of gpu_tests, bench_fp8, bench_layer_parallel" >&2
    exit 2
  fi
  RUN[$name]=1
done
if [ "$TINY" = 1 ]; then  # a script check on a possibly busy CPU: generous limits
  LIMIT=([gpu_tests]=600 [bench_fp8]=600 [bench_layer_parallel]=600)
fi
for name in "${!LIMIT_SET[@]}"; do LIMIT[$name]="${LIMIT_SET[$name]}"; done

cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # a GPU image may have only python3
if [ -n "$WHEELS" ]; then
  shopt -s nullglob
  wheel_files=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [ "${#wheel_files[@]}" -eq 0 ]; then
    echo "gpu_check.sh: --wheels $WHEELS holds no .whl files (make them with scripts/gpu_wheels.sh $WHEELS)" >&2
    exit 2
  fi
  SITE="${TMPDIR:-/tmp}/hf_ext_gpu_site"
  rm -rf "$SITE"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheel_files[@]}" >&2; then
    echo "gpu_check.sh: installing the wheels of $WHEELS failed" >&2
    exit 2
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # hf_ext from this checkout (after the wheels: they hold no hf_ext)
mkdir -p "$OUT"
: > "$OUT/stages.tsv"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
mapfile -t GPU_TEST_FILES < <(grep -rlE --include='*.py' 'mark\.gpu\b' tests | sort)

stage() {  # stage NAME SECONDS CMD...   (skipped unless NAME is in --stages)
  local name="$1" limit="$2" start rc
  shift 2
  [ -n "${RUN[$name]+x}" ] || return 0
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$limit" >> "$OUT/stages.tsv"
}

"$PY" - > "$OUT/environment.json" 2> "$OUT/environment.log" <<'PYEOF'
import importlib, json

env = {}
for name in ("torch", "transformers", "accelerate", "peft", "torchao", "transformer_engine", "datasets", "hf_ext"):
    try:
        module = importlib.import_module(name)
        env[name] = getattr(module, "__version__", "importable")
    except Exception as exc:  # noqa: BLE001  (a missing or broken optional package is a finding, not a crash)
        env[name] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
print(json.dumps(env))
PYEOF

GPU_TEST_ARGS=(-m gpu -q -p no:cacheprovider --continue-on-collection-errors --junitxml "$OUT/gpu_tests.xml")
stage gpu_tests "${LIMIT[gpu_tests]}" "$PY" -m pytest "${GPU_TEST_ARGS[@]}" "${GPU_TEST_FILES[@]}"
if [ "$TINY" = 1 ]; then
  stage bench_fp8 "${LIMIT[bench_fp8]}" "$PY" scripts/bench_fp8.py --tiny --steps 1 --precisions bf16,fp8_tensorwise
  # the GPU run's wiring (no zero-pair control model, which is off on GPU) at the fewest timed tokens that still
  # measure a decode time, at one decode batch size (the GPU run's 1 and 8 take the same path): a script check, not a
  # measurement
  stage bench_layer_parallel "${LIMIT[bench_layer_parallel]}" "$PY" scripts/bench_layer_parallel.py --tiny \
    --control false --repeats 2 --new_tokens 16 --batch_sizes 1
else
  stage bench_fp8 "${LIMIT[bench_fp8]}" "$PY" scripts/bench_fp8.py --precisions bf16,fp8_tensorwise
  stage bench_layer_parallel "${LIMIT[bench_layer_parallel]}" "$PY" scripts/bench_layer_parallel.py
fi

"$PY" - "$OUT" "$TINY" <<'PYEOF'
import json, os, sys, xml.etree.ElementTree as ET

out, tiny = sys.argv[1], sys.argv[2] == "1"
summary = {"check": "gpu_check", "tiny": tiny, "stages": {}, "ok": True}
try:
    summary["environment"] = json.load(open(os.path.join(out, "environment.json")))
except (OSError, ValueError) as exc:
    summary["environment"] = f"unreadable ({exc})"
try:
    import torch

    summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary["torch"] = torch.__version__
except Exception as exc:  # noqa: BLE001
    summary["device"] = f"unknown ({exc})"
for line in open(os.path.join(out, "stages.tsv")):
    name, rc, secs, limit = line.rstrip("\n").split("\t")
    rc = int(rc)
    summary["stages"][name] = {"rc": rc, "seconds": int(secs), "timed_out": rc in (124, 137), "limit_s": int(limit)}
    summary["ok"] = summary["ok"] and rc == 0


def json_lines(name):
    rows = []
    path = os.path.join(out, f"{name}.log")
    if not os.path.isfile(path):
        return rows
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


junit = os.path.join(out, "gpu_tests.xml")
if "gpu_tests" in summary["stages"] and os.path.isfile(junit):
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary["stages"]["gpu_tests"]["counts"] = counts
    # Test files that did not import (collection errors): named, so a missing package is visible at a glance.
    summary["stages"]["gpu_tests"]["not_collected"] = sorted(
        case.get("name", "")
        for case in suite.iter("testcase")
        if case.find("error") is not None and case.find("error").get("message") == "collection failure"
    )
if "bench_fp8" in summary["stages"]:
    fp8 = json_lines("bench_fp8")
    summary["stages"]["bench_fp8"]["summary"] = next((r for r in fp8 if r.get("model") == "summary"), None)
if "bench_layer_parallel" in summary["stages"]:
    summary["stages"]["bench_layer_parallel"]["rows"] = json_lines("bench_layer_parallel")
text = json.dumps(summary)
tmp = os.path.join(out, "summary.json.tmp")
with open(tmp, "w") as fh:
    fh.write(text)
os.replace(tmp, os.path.join(out, "summary.json"))
print(text)
PYEOF
