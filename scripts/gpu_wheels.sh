#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels scripts/gpu_check.sh needs on a GPU machine without network
# whose Python lacks them (see docs/benchmarks.md, "Running the GPU check"):
#   transformers (the version this checkout is tested with), torchao (FP8), datasets with dill and multiprocess
#   (the HyperINF GPU test builds its data with datasets), regex (transformers' minimum).
# Default target: CPython 3.12 on x86-64 Linux (manylinux). About 19 MB.
#
#   scripts/gpu_wheels.sh .whl                       # then: scripts/gpu_check.sh --wheels .whl
#   PY_VERSION=3.11 scripts/gpu_wheels.sh /tmp/whl   # for another Python
set -euo pipefail

DEST="${1:?usage: scripts/gpu_wheels.sh DEST_FOLDER}"
PY_VERSION="${PY_VERSION:-3.12}"
PY="${PYTHON:-python3}"
PACKAGES=(
  "transformers==5.24.0"
  "torchao==0.18.0"
  "datasets==5.2.0"
  "dill==0.4.1"
  "multiprocess==0.70.19"
  "regex==2026.11.19"
)
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${PACKAGES[@]}"
ls -1 "$DEST"
