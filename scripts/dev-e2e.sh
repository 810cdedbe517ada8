#!/usr/bin/env bash
# End to end on a fresh machine: `archipelago dev` brings up a coordinator,
# two sim-TEE islands, a plain island and the gateway; then the product
# page's four Quick Start requests run with curl against the gateway, and the
# official `openai` Python client (pip-installed into a venv under
# ~/.cache/archipelago) runs chat, streamed chat and embeddings through it.
# ARCHIPELAGO_DEV_NO_MODELS=1 uses the echo workload instead of real models.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${ARCHIPELAGO_CACHE:-$HOME/.cache/archipelago}"
mkdir -p "$cache"
target="${CARGO_TARGET_DIR:-target}"
cargo build -p archipelago -p archipelago-enclave
bin="$target/debug/archipelago"

dir="$(mktemp -d)"
flags=()
if [ "${ARCHIPELAGO_DEV_NO_MODELS:-}" = 1 ]; then flags+=(--no-models); fi
"$bin" dev --data-dir "$dir" --coordinator-port 0 --gateway-port 0 "${flags[@]}" >"$dir/dev.out" 2>&1 &
dev_pid=$!
cleanup() {
  rc=$?
  kill -INT $dev_pid 2>/dev/null || true
  wait $dev_pid 2>/dev/null || true
  if [ $rc -eq 0 ]; then rm -rf "$dir"; else echo "state kept in $dir" >&2; fi
}
trap cleanup EXIT
for _ in $(seq 1 900); do
  [ -f "$dir/dev.env" ] && break
  kill -0 $dev_pid 2>/dev/null || { cat "$dir/dev.out"; exit 1; }
  sleep 1
done
[ -f "$dir/dev.env" ] || { echo "dev network not ready after 15 min"; cat "$dir/dev.out"; exit 1; }
set -a; . "$dir/dev.env"; set +a
if grep -q 'ran confidentially' "$dir/dev.out"; then echo "self-check: ok"; else cat "$dir/dev.out"; exit 1; fi

wl=1; input='{"prompt": "Classify this patient record...", "max_tokens": 8}'
if [ "${ARCHIPELAGO_DEV_NO_MODELS:-}" = 1 ]; then wl=5; input='{"prompt": "Classify this patient record..."}'; fi
auth=(-H "Authorization: Bearer $ARCHIPELAGO_API_KEY" -H 'Content-Type: application/json')
G="$ARCHIPELAGO_GATEWAY_URL/api/v1"
# 1. Generate a key
key=$(curl -sf -X POST "$G/confidential/keys" "${auth[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key_id"])')
# 2. Encrypt your input (the page's body, no workload_id)
ct=$(curl -sf "$G/confidential/encrypt" "${auth[@]}" -d "{\"input\": $input, \"key_id\": \"$key\"}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["ciphertext"])')
# 3. Submit a confidential job
job=$(curl -sf "$G/jobs" "${auth[@]}" -d "{\"workload_id\": $wl, \"confidential\": true, \"encryption_key_id\": \"$key\",
  \"input\": {\"encrypted\": true, \"key_id\": \"$key\", \"ciphertext\": \"$ct\"}}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 300); do
  state=$(curl -sf "$G/jobs/$job" "${auth[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  case "$state" in succeeded|failed|cancelled) break;; esac
  sleep 1
done
[ "$state" = succeeded ] || { echo "job $job ended $state"; exit 1; }
out=$(curl -sf "$G/jobs/$job" "${auth[@]}" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["output"]))')
# 4. Decrypt the response
curl -sf "$G/confidential/decrypt" "${auth[@]}" -d "{\"output\": $out, \"key_id\": \"$key\"}" \
  | python3 -c 'import json,sys; o=json.load(sys.stdin)["output"]; assert o["text"], o; print("quick start: decrypted", repr(o["text"]))'
# No plaintext at the coordinator.
if grep -rq "Classify this patient record" "$dir/coordinator" "$dir"/island-*; then
  echo "plaintext found in coordinator or island state"; exit 1
fi

# The openai client.
venv="$cache/venv-openai"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import openai' 2>/dev/null || "$venv/bin/pip" install --quiet "openai==1.109.1"
if [ "${ARCHIPELAGO_DEV_NO_MODELS:-}" = 1 ]; then export ARCHIPELAGO_TEST_MODEL=echo; fi
"$venv/bin/python" scripts/test-openai-gateway.py
echo "dev e2e: OK"
