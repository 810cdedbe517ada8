#!/usr/bin/env bash
# Short, bounded fuzzing run of the envelope parsers (not part of CI).
#   scripts/fuzz-envelope.sh [SECONDS]   (default 60)
# Installs cargo-fuzz if missing. libFuzzer needs -Z flags; on a stable
# toolchain we allow them with RUSTC_BOOTSTRAP=1 (the fuzz crate only).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (one time)…" >&2
  cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/corpus/envelope_parse
# Seed the corpus with the documented vectors so the fuzzer starts from valid messages.
python3 - <<'PY'
import re, pathlib
doc = pathlib.Path("docs/envelope.md").read_text()
block = doc.split("<!-- vectors:begin -->")[1].split("<!-- vectors:end -->")[0]
vals, cur = {}, None
for line in block.splitlines():
    m = re.match(r"^(\w+) =\s*(.*)$", line)
    if m:
        cur = m.group(1); vals[cur] = m.group(2).strip()
    elif line.startswith("    ") and cur:
        vals[cur] += line.strip()
out = pathlib.Path("fuzz/corpus/envelope_parse")
for name in ("request_envelope", "response_header"):
    (out / name).write_bytes(bytes.fromhex(vals[name]))
(out / "response_whole").write_bytes(bytes.fromhex(vals["response_header"] + vals["response_chunk_0"] + vals["response_chunk_1"]))
PY
RUSTC_BOOTSTRAP=1 cargo fuzz run envelope_parse fuzz/corpus/envelope_parse -- \
  -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048
