#!/usr/bin/env bash
# GPU check (≤ 5 minutes): the GPU-marked tests, then every benchmark on cuda, each with a
# time limit. JSON lines go to $OUT (or ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python -m pip install --quiet -e ".[all]"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
timeout 120 python -m pytest -m gpu -q 2>&1 | tail -20 | tee "$out/pytest-gpu.txt"
for task in $(python -c "from jiio_ext.bench import TASKS; print(' '.join(sorted(TASKS)))"); do
  timeout 60 jiio bench "$task" --device cuda --json --quick | tee -a "$out/bench-cuda.jsonl"
done
