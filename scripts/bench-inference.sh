#!/usr/bin/env bash
# Side-by-side inference benchmark on this machine: candle (this project)
# against ONNX Runtime (MiniLM) and llama.cpp (SmolLM2), same inputs, one run.
#
#   scripts/bench-inference.sh [embed|chat|all]
#
# Needs scripts/fetch-models.sh first. The Python side lives in a venv
# outside the repo (default /tmp/inf-venv, override with BENCH_VENV); it is
# created on first use (llama-cpp-python builds from source with cmake:
# apt-get install -y cmake).
set -euo pipefail
what="${1:-all}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
venv="${BENCH_VENV:-/tmp/inf-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy tokenizers onnxruntime
fi
if [ "$what" != "embed" ] && ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  command -v cmake >/dev/null || { echo "bench: cmake needed for llama-cpp-python (apt-get install -y cmake)" >&2; exit 1; }
  "$venv/bin/pip" install -q --no-binary llama-cpp-python llama-cpp-python
fi
cd "$root"
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
# The dev profile builds every dependency and this crate at opt-level 3
# (root Cargo.toml), so the bench shares the test build instead of a
# separate release build.
cargo run -q -p archipelago-inference --bin inference-bench -- "$what"
"$venv/bin/python" crates/inference/bench/bench_reference.py "$what"
