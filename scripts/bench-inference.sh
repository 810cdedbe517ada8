#!/usr/bin/env bash
# Side-by-side inference benchmark on this machine: this crate (its fused
# MiniLM forward for embeddings, llama.cpp through llama-cpp-2 for chat) against
# the anchors (ONNX Runtime for MiniLM, llama-cpp-python for SmolLM2), same
# inputs and thread count, interleaved in one run.
#
#   scripts/bench-inference.sh [embed|chat|all]     # BENCH_ROUNDS=2 BENCH_THREADS=2
#
# Needs scripts/fetch-models.sh first. The Python side lives in a venv
# outside the repo (default /tmp/inf-venv, override with BENCH_VENV); it is
# created on first use (llama-cpp-python builds from source with CMake,
# which scripts/ensure-build-deps.sh installs).
set -euo pipefail
what="${1:-all}"
rounds="${BENCH_ROUNDS:-2}"
export BENCH_THREADS="${BENCH_THREADS:-2}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
"$here/ensure-build-deps.sh"
venv="${BENCH_VENV:-/tmp/inf-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy tokenizers onnxruntime
fi
if [ "$what" != "embed" ] && ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  "$venv/bin/pip" install -q --no-binary llama-cpp-python llama-cpp-python
fi
cd "$root"
# The dev profile builds every dependency and this crate at opt-level 3
# (root Cargo.toml), so the bench shares the test build instead of a
# separate release build.
cargo build -q -p archipelago-inference --bin inference-bench
bench="${CARGO_TARGET_DIR:-target}/debug/inference-bench"
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $BENCH_THREADS threads each, $rounds rounds"
parts=(embed chat)
[ "$what" = all ] || parts=("$what")
for r in $(seq 1 "$rounds"); do
  for p in "${parts[@]}"; do
    echo "-- round $r, $p, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$bench" "$p"
    "$venv/bin/python" crates/inference/bench/bench_reference.py "$p"
  done
done
