#!/usr/bin/env bash
# The chunker as a spec: a reference FastCDC 2020 in plain Python (tests/chunker/fastcdc2020.py)
# must cut fixtures/mixed.bin as the .cuts files say, and cut exactly the chunks (ids and
# lengths) that live `hoard serve`s on 127.0.0.1 list in their manifests, from what
# GET /v1/config publishes. Three stores: the default 16K/64K/256K; odd sizes 1001/6000/25001
# (odd min and max, avg not a power of two); and the smallest, 65/256/1025, where an odd min
# lets a chunk end one byte short of min. They cover the off-by-one corners of the cut loop.
#
# Usage: .ci/chunker.sh [--allow-partial-config]   (the flag passes on to check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CHUNKER_VENV:-target/chunker-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import blake3' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'blake3>=1,<2'
fi
cargo build --quiet --bin hoard
hoard="${HOARD_BIN:-target/debug/hoard}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts `hoard serve` on the store $1 (port 0) and appends its URL to $urls.
urls=()
serve() {
    "$hoard" --store "$1" serve --listen 127.0.0.1:0 --gc-interval 0s >"$1.out" 2>"$1.log" &
    pids+=($!)
    for _ in $(seq 100); do
        [ -s "$1.out" ] && break
        sleep 0.1
    done
    local line
    line="$(head -1 "$1.out")"
    case "$line" in
        "listening on "*) urls+=(--server "${line#listening on }") ;;
        *) echo "hoard serve on $1 did not start:" >&2; cat "$1.log" >&2; exit 1 ;;
    esac
}

"$hoard" --store "$work/odd" init --min 1001 --avg 6000 --max 25001 >/dev/null
"$hoard" --store "$work/tiny" init --min 65 --avg 256 --max 1025 >/dev/null
serve "$work/default"
serve "$work/odd"
serve "$work/tiny"
timeout 600 "$venv/bin/python" tests/chunker/check.py "${urls[@]}" "$@"
for log in "$work"/*.log; do
    if grep -q panicked "$log"; then
        echo "a server panicked:" >&2
        grep -A5 panicked "$log" >&2
        exit 1
    fi
done
