#!/usr/bin/env bash
# Start the whole system on the embedded default: builds the `archipelago`
# and `archipelago-enclave` binaries (release) and runs `archipelago dev`,
# which starts a coordinator (SQLite), two sim-TEE islands, an island without
# TEE and a local gateway, fetches the models if missing, runs a self-check
# confidential job and prints URLs, an API key and copy-paste examples.
#   scripts/dev.sh [--data-dir DIR] [other `archipelago dev` flags]
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-build-deps.sh
cargo build --release -p archipelago -p archipelago-enclave
exec "${CARGO_TARGET_DIR:-target}/release/archipelago" dev "$@"
