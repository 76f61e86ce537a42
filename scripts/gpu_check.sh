#!/usr/bin/env bash
# GPU check: the GPU-marked tests, then every benchmark on cuda (JSON lines in $OUT or ./gpu-results).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python -m pip install --quiet -e ".[all]"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -m pytest -m gpu -q | tee "$out/pytest-gpu.txt"
jiio bench all --device cuda --json | tee "$out/bench-cuda.jsonl"
