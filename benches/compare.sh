#!/usr/bin/env bash
# Runs the end-to-end benchmark beside borg and casync, installing them from Debian's packages
# first when they are missing (needs root or sudo; a peer that cannot be installed is skipped).
# Options go through the environment: HOARD_BENCH_MIB (default 1024), HOARD_BENCH_RUNS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v borg >/dev/null || missing+=(borgbackup)
command -v casync >/dev/null || missing+=(casync)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" \
    || echo "could not install ${missing[*]}; the benchmark skips what is missing" >&2
fi
cargo bench --bench e2e
