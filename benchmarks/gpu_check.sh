#!/usr/bin/env bash
# The throughput table on a GPU: the MNIST preset in 32-true, bf16-mixed and compiled (reduce-overhead:
# CUDA graphs), then the CIFAR-10 and STL-10 presets (random images of their shape where the data is absent)
# in 32-true and bf16-mixed; under 10 minutes.
# Run from anywhere: `bash benchmarks/gpu_check.sh`. Tables, JSON and Lightning's stderr go to $OUT
# when it is set, else to a fresh temporary folder.
# No network is assumed: the repository's packages import from its root, and a venv is built only
# when a dependency is missing (it sees the machine's own torch through --system-site-packages).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-$(mktemp -d)}
mkdir -p "$RESULTS"

if ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: $PYTHON has no torch with a CUDA device" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import orchestration.training, datamodules.semi_supervised, callbacks' 2>/dev/null; then
  echo "gpu_check: dependencies missing; installing into .gpu-venv"
  "$PYTHON" -m venv --system-site-packages .gpu-venv &&
    { .gpu-venv/bin/pip install --quiet -e ".[mnist]" || .gpu-venv/bin/pip install --quiet -e .; } ||
    { echo "gpu_check: pip install -e . failed" >&2; exit 2; }
  PYTHON=.gpu-venv/bin/python
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(),
  "| TF32: matmul", torch.backends.cuda.matmul.allow_tf32, "cudnn", torch.backends.cudnn.allow_tf32)'

run() {  # run NAME SECONDS [throughput.py options]
  local name=$1 seconds=$2
  shift 2
  echo "== $name: $*"
  timeout "$seconds" "$PYTHON" benchmarks/throughput.py --device cuda --steps 100 --warmup 10 \
    --json "$RESULTS/throughput-$name.json" "$@" 2>"$RESULTS/throughput-$name.stderr" |
    tee "$RESULTS/throughput-$name.txt"
  local status=${PIPESTATUS[0]}
  [ "$status" -eq 0 ] || echo "gpu_check: $name ended with status $status (124: timed out); see $RESULTS/throughput-$name.stderr"
}

run fp32 70 --precision 32-true
run bf16 70 --precision bf16-mixed
# Every row compiles its own network: one round and no soft row keep it inside the budget. Its
# pictures sample also recompiles the eval-mode forward: read "callbacks on / off" from fp32 and bf16.
run compile 120 --precision 32-true --compile --pooling hard --rounds 1
for dataset in cifar10 stl10; do  # larger convolutions: where bf16 and tensor cores can pay off
  for precision in 32-true bf16-mixed; do
    run "$dataset-${precision%%-*}" 90 --dataset "$dataset" --precision "$precision" --pooling hard \
      --no-objectives --steps 30 --rounds 2
  done
done
echo "gpu_check: results in $RESULTS"
