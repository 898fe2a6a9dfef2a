#!/usr/bin/env bash
# tus 1.0 with a client no one here wrote: tuspy (from PyPI, into a venv) uploads to a live
# `hoard serve` on 127.0.0.1 (tests/tus/tuspy_test.py: 100 MiB, an edited copy with sha1
# checksums, a resume across kill -9). Writes target/tus-report.json. With HOARD_TUS_STORE,
# HOARD_TUS_INDEX and HOARD_TUS_SERVERS set (.ci/remote.sh), through that many servers on a
# bucket store behind HAProxy instead (target/tus-report-cluster.json).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUS_VENV:-target/tus-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tusclient' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'tuspy>=1.1,<2'
fi
cargo build --quiet --bin hoard
timeout 600 "$venv/bin/python" tests/tus/tuspy_test.py
