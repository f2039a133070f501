#!/usr/bin/env bash
# Round-2 kernel checks and timings on one GPU (H100/H200) in under 10 minutes; results in $OUT.
#
#   bash benchmarks/kernels_gpu.sh          (device tool: run(command="bash benchmarks/kernels_gpu.sh",
#                                            timeout_s=600); BUDGET=seconds of timings, default 210)
#
# 1. correctness first: every candidate config of the prepared-weight path (K-major kernels,
#    torch int4/int8, dequantize + cuBLAS) against fp64 in parallel workers (which also compile
#    everything for the timings), the 2:4 kernel, both custom ops under a CUDA graph and
#    torch.compile;
# 2. the copy bandwidth, then timings in priority order until the budget is spent (decode on every
#    width and shape first, then M=16, large M, the rest): ours, fp16 cuBLAS, torch int4 with bf16
#    activations, and the round-1 bit-plane op at M=1 and 16, all against the roofline;
# 3. the GPU tests of tests/kernels, when the project's dependencies import there (a bare
#    PyTorch machine lacks pydantic and others: carry them as wheels in .whl, see README).
# Only PyTorch and Triton are needed for 1-2: allocator's kernels load without the package init.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kernels_gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1 ALLOCATOR_KERNEL_CACHE="$OUT/kernel_choices.json"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
{
  nvidia-smi -L; nproc
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout 420 $PY benchmarks/kernels_bench.py --round2 --budget "${BUDGET:-210}" --round1 1,16 \
  --workers "$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))" --out "$OUT" > "$OUT/kernels.log" 2>&1
echo "kernels_bench.py exit $? after $(( $(date +%s) - START )) s"
tail -n 60 "$OUT/kernels.log"
LEFT=$(( 570 - ($(date +%s) - START) ))
if $PY -c "import allocator.quant.quant_linear" 2>/dev/null && [ "$LEFT" -gt 30 ]; then
  timeout "$LEFT" $PY -m pytest -q -m gpu -p no:cacheprovider tests/kernels \
    > "$OUT/pytest_gpu.txt" 2>&1
  echo "pytest exit $?"; tail -n 15 "$OUT/pytest_gpu.txt"
else
  echo "GPU tests not run: project dependencies missing or ${LEFT}s left" | tee "$OUT/pytest_gpu.txt"
fi
echo "done after $(( $(date +%s) - START )) s"
