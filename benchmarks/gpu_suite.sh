#!/usr/bin/env bash
# The GPU checks in one run (< 8 min on one GPU): CUDA-marked tests, SOTA seconds per epoch on the
# GPU (fp32, bf16, compiled), models per GPU-hour with 1, 2, 4, 8 workers (small and SOTA configs,
# through the embedded PostgreSQL server) and GPU memory per worker, and K seeds of one configuration
# trained as one batched (vmapped) computation against one after another (bench_batched.py, small
# and SOTA, K = 1, 2, 4, 8). Prints one table per part.
# Without a CUDA device every part reports that it skipped, and the script exits 0.
#
#   bash benchmarks/gpu_suite.sh            # from the repository root, in the project's virtualenv
#   GPU_SUITE_WORKERS="1 2" bash benchmarks/gpu_suite.sh   # fewer worker counts
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORKERS=${GPU_SUITE_WORKERS:-1 2 4 8}
status=0

echo "## CUDA-marked tests"
$PY -m pytest -q -m cuda tests/test_gpu.py -rs -p no:cacheprovider 2>&1 | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "## SOTA epochs on the GPU, models per GPU-hour"
# shellcheck disable=SC2086
timeout 420 $PY benchmarks/bench_gpu.py --epochs 3 --workers $WORKERS --jobs-per-worker 2 --model-epochs 2
rc=$?
[ "$rc" -eq 0 ] || { echo "bench_gpu.py failed (exit $rc)"; status=1; }

echo "## K models batched in one process vs one after another"
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    timeout 60 $PY benchmarks/bench_batched.py --device cuda --config small sota --models 1 2 4 8 --steps 20
    rc=$?
    [ "$rc" -eq 0 ] || { echo "bench_batched.py failed (exit $rc)"; status=1; }
else
    echo "skipped (no CUDA device)"
fi
exit $status
