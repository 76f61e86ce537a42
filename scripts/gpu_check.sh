#!/usr/bin/env bash
# GPU check (about 5 minutes): the GPU-marked tests, a one-process NCCL run of
# `jiio train adversarial` under torchrun, then every benchmark on cuda (--quick), each step with
# a time limit; FULL_BENCHES="overhead torchdeq" adds full-size runs of those benches (90 s
# each at most). Results go to $OUT (or ./gpu-results).
#
# The device machines cannot reach a package index: torchdeq, torchattacks, higher, kornia and
# kornia_rs travel as wheels in .whl/ (see the device README) when the image lacks them.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, torchdeq, kornia; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/gpu.txt"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider -x 2>&1 | tail -25 | tee "$out/pytest-gpu.txt"
timeout 60 torchrun --standalone --nproc_per_node=1 -m jiio_ext.apps.cli train adversarial \
  --epochs 1 --device cuda --out /tmp/gpu-adv --no-robust-eval 2>&1 | tail -8 | tee "$out/torchrun-nccl.txt"
for task in $(python3 -c "from jiio_ext.apps.bench import TASKS; print(' '.join(sorted(TASKS)))"); do
  timeout 90 jiio bench "$task" --device cuda --json --quick >/tmp/bench.json \
    2>>"$out/bench-stderr.txt" || echo "{\"task\": \"$task\", \"exit_status\": $?}" >/tmp/bench.json
  tee -a "$out/bench-cuda.jsonl" </tmp/bench.json
done
for task in ${FULL_BENCHES:-}; do
  timeout 90 jiio bench "$task" --device cuda --json >/tmp/bench.json \
    2>>"$out/bench-stderr.txt" || echo "{\"task\": \"$task\", \"exit_status\": $?}" >/tmp/bench.json
  tee -a "$out/bench-cuda-full.jsonl" </tmp/bench.json
done
