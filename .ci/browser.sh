#!/usr/bin/env bash
# The browser page and tus in a real browser: Debian's chromium (apt), headless, driven by
# playwright-core; tus-js-client as a third-party client (both from npm, versions pinned in
# tests/browser/package-lock.json). First the page's own JavaScript (FastCDC, BLAKE3) against
# the test vectors the Rust tests use, then tests/browser/page.test.mjs against a live server,
# on a directory store, on a bucket store, and through HAProxy in front of three servers on a
# bucket store. Screenshots and figures land in target/browser/ (and remote/, cluster/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v npm >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
echo "node $(node --version), $(/usr/bin/chromium --version 2>/dev/null)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
echo "== page JavaScript against the shared test vectors"
node --test tests/js/
echo "== the page and tus-js-client in chromium"
cargo build --quiet --bin hoard
timeout 900 node --test --test-timeout=600000 tests/browser/page.test.mjs
echo "== the same, on a store in a bucket (PostgreSQL and SeaweedFS on loopback)"
dir="$(mktemp -d /tmp/hoard-engines.XXXXXX)"
chmod 755 "$dir"
trap '.ci/engines.sh stop "$dir"; rm -rf "$dir"' EXIT
.ci/engines.sh start "$dir"
# shellcheck disable=SC1091
. "$dir/engines.env"
HOARD_BROWSER_STORE="$HOARD_TEST_BUCKET/browser" HOARD_BROWSER_INDEX="$HOARD_TEST_INDEX" \
    timeout 900 node --test --test-timeout=600000 tests/browser/page.test.mjs
echo "== the same, through HAProxy in front of three servers on another bucket store"
if ! command -v haproxy >/dev/null; then
    apt-get update -qq && apt-get install -y -qq haproxy >/dev/null
fi
"$(find /usr/lib/postgresql -path '*/bin/psql' | sort | tail -1)" "$HOARD_TEST_INDEX" -qc \
    "CREATE DATABASE browser_cluster"
HOARD_BROWSER_STORE="$HOARD_TEST_BUCKET/browser-cluster" \
    HOARD_BROWSER_INDEX="${HOARD_TEST_INDEX%/*}/browser_cluster" HOARD_BROWSER_SERVERS=3 \
    timeout 900 node --test --test-timeout=600000 tests/browser/page.test.mjs
ls -l target/browser/ target/browser/remote/ target/browser/cluster/
