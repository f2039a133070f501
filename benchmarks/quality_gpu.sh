#!/usr/bin/env bash
# Run the quality benchmark on a GPU machine that has PyTorch but not this project's other
# dependencies or the model: the GGUF travels in two parts (.devcarry1, .devcarry2), the wheels
# and the Jane Austen corpus in .devcarry2. Rows go to /tmp/res, bundled into $OUT/results.tgz.
set -uo pipefail
STOP_AT=$(( $(date +%s) + ${1:-460} ))
cat .devcarry1/part_aa .devcarry2/part_ab > /tmp/s.gguf && md5sum /tmp/s.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .devcarry2/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD ALLOCATOR_CACHE=/tmp/acache PYTHONUNBUFFERED=1
mkdir -p $ALLOCATOR_CACHE /tmp/res && cp -r .devcarry2/cache/janeaustenr $ALLOCATOR_CACHE/
nvidia-smi -L; nproc
bundle() { tar czf $OUT/r.tmp -C /tmp res 2>/dev/null && mv $OUT/r.tmp $OUT/results.tgz; }
(while sleep 15; do bundle; done) &
B="python3 benchmarks/quality.py --model /tmp/s.gguf --device cuda --results /tmp/res/quality \
  --tables /tmp/res/tables --calib-windows 16 --quiet --stop-at $STOP_AT"
$B --methods ours,uniform,llama,uniform_gptq --budgets 3.0,3.5
$B --methods ours,uniform,llama,uniform_gptq --budgets 2.5,4.25
$B --methods ours_rtn,lim,hawq,baq,exl2,llama_gptq --budgets 3.0,3.5,2.5,4.25
$B --methods ours_refined,ours_sparse,fisher --budgets 3.0,3.5,2.5,4.25
bundle
cat /tmp/res/quality.md
