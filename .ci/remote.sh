#!/usr/bin/env bash
# The tests that need real engines: starts PostgreSQL and SeaweedFS on loopback
# (.ci/engines.sh), runs the integration tests that use them with their variables set (then,
# alone, the ones that stop an engine mid-push), and stops both by PID whatever happens. The
# cluster tests put HAProxy (Debian) in front of several servers; each test starts and stops
# its own; so does tuspy's run through three servers.
set -euo pipefail
cd "$(dirname "$0")/.."
# Under /tmp, so the postgres user (PostgreSQL refuses to run as root) can reach its cluster
# whatever the permissions of the checkout.
dir="$(mktemp -d /tmp/hoard-engines.XXXXXX)"
chmod 755 "$dir"
trap '.ci/engines.sh stop "$dir"; rm -rf "$dir"' EXIT
.ci/engines.sh start "$dir"
# shellcheck disable=SC1091
. "$dir/engines.env"
if ! command -v haproxy >/dev/null; then
    apt-get update -qq && apt-get install -y -qq haproxy >/dev/null
fi
cargo test --test integration -- --nocapture bucket_ pg_ remote_ cluster_
# tuspy through three servers on one bucket store behind HAProxy, on a database of its own.
"$(find /usr/lib/postgresql -path '*/bin/psql' | sort | tail -1)" "$HOARD_TEST_INDEX" -qc \
    "CREATE DATABASE tuspy_cluster"
HOARD_TUS_STORE="$HOARD_TEST_BUCKET/tuspy-cluster" \
    HOARD_TUS_INDEX="${HOARD_TEST_INDEX%/*}/tuspy_cluster" HOARD_TUS_SERVERS=3 .ci/tus.sh
# Last and alone: these stop and start the engines under the others' feet.
HOARD_TEST_OUTAGES=1 cargo test --test integration -- --nocapture --test-threads=1 outage_
