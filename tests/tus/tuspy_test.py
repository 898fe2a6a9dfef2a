"""tus 1.0 with a client no one here wrote: tuspy (PyPI) against `hoard serve` on 127.0.0.1.

Uploads a 100 MiB file, then an edited copy (sha1 checksums on every PATCH), and reads from the
server's webhook how many bytes crossed the wire and how many were new; then resumes an upload
after the server is killed with SIGKILL and started again. Every file is downloaded and compared.
Writes the figures to target/tus-report.json. Run by .ci/tus.sh; exits non-zero on any failure.

With HOARD_TUS_STORE (s3://BUCKET/PREFIX), HOARD_TUS_INDEX (postgres://...) and
HOARD_TUS_SERVERS=N, the same runs against N servers on that store behind HAProxy (round robin,
each request on its own), and the kill -9 is of one of them; figures go to
target/tus-report-cluster.json. .ci/remote.sh runs it so, on its engines.
"""

import hashlib
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from tusclient import client as tus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOARD = os.environ.get("HOARD_BIN", os.path.join(ROOT, "target", "debug", "hoard"))
TOKEN = "tus-test-token"
REMOTE = os.environ.get("HOARD_TUS_STORE")
SERVERS = int(os.environ.get("HOARD_TUS_SERVERS", "1"))
STARTED = []  # every process started, each stopped by its PID at the end whatever happens
SIZE = 100 << 20
MIB = 1 << 20


def mixed(size, seed):
    """Half random, half text-like bytes, in 64 KiB runs: compressible and dedup-friendly."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(3, 12)) for _ in range(512)]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.5:
            out += rng.randbytes(65536)
        else:
            run = bytearray()
            while len(run) < 65536:
                run += rng.choice(words) + b" "
            out += run
    return bytes(out[:size])


def edit(data, n, seed):
    """`n` small edits: overwrites and insertions at random places."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(n):
        at = rng.randrange(len(out))
        patch = rng.randbytes(rng.randrange(1, 200))
        if rng.random() < 0.5:
            out[at:at + len(patch)] = patch
        else:
            out[at:at] = patch
    return bytes(out)


class Hooks:
    """Collects the server's webhook events."""

    def __init__(self):
        events = self.events = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                events.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d/hook" % self.httpd.server_address[1]

    def wait(self, want, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in list(self.events):
                if want(e):
                    return e
            time.sleep(0.05)
        raise AssertionError("no matching hook event; got %r" % self.events)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`hoard serve` as a child process on a fixed loopback port."""

    def __init__(self, store, port, hook_url):
        where = ["--store", store]
        if REMOTE:
            where = ["--store", REMOTE, "--index", os.environ["HOARD_TUS_INDEX"]]
        self.proc = subprocess.Popen(
            [HOARD, *where, "serve", "--listen", "127.0.0.1:%d" % port,
             "--token", TOKEN, "--hook-url", hook_url],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="warn"))
        STARTED.append(self.proc)
        line = self.proc.stdout.readline().decode().strip()
        assert line.startswith("listening on "), line
        self.url = line[len("listening on "):]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Cluster:
    """SERVERS `hoard serve` processes on one store behind HAProxy; `url` is the proxy's.
    `kill` kills one server (SIGKILL) and starts it again on its port."""

    def __init__(self, store, port, hook_url):
        self.ports = [free_port() for _ in range(SERVERS)]
        self.hook_url, self.store = hook_url, store
        self.servers = [Server(store, p, hook_url) for p in self.ports]
        backends = "".join("  server s%d 127.0.0.1:%d check inter 300ms fall 1 rise 1\n" % (i, p)
                           for i, p in enumerate(self.ports))
        self.cfg = os.path.join(os.path.dirname(store), "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write("defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n"
                    "  timeout server 120s\n  option http-server-close\n  retries 3\n"
                    "  option redispatch\n"
                    "frontend in\n  bind 127.0.0.1:%d\n  default_backend hoard\n"
                    "backend hoard\n  balance roundrobin\n  option httpchk GET /healthz\n%s"
                    % (port, backends))
        self.proxy = subprocess.Popen(["haproxy", "-db", "-f", self.cfg],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        STARTED.append(self.proxy)
        self.url = "http://127.0.0.1:%d" % port
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the proxy did not answer"
            time.sleep(0.1)
        self.killed = 0

    def kill(self):
        victim = self.killed % len(self.servers)
        self.servers[victim].kill()
        self.servers[victim] = Server(self.store, self.ports[victim], self.hook_url)
        self.killed += 1

    def stop(self):
        for s in self.servers:
            s.stop()
        self.proxy.terminate()
        self.proxy.wait(timeout=30)

    def requests_each(self):
        """Requests each server has answered (from its /metrics), health checks aside."""
        out = []
        for p in self.ports:
            req = urllib.request.Request("http://127.0.0.1:%d/metrics" % p,
                                         headers={"Authorization": "Bearer " + TOKEN})
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
            out.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("hoard_http_requests_total{")
                           and 'route="/healthz"' not in line))
        return out


def download(url, name):
    req = urllib.request.Request("%s/v1/files/%s" % (url, name),
                                 headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def upload(client, path, name, **kw):
    """Uploads `path` with tuspy; returns the upload's URL."""
    u = client.uploader(path, metadata={"filename": name}, **kw)
    u.upload()
    return u.url


def completed(hooks, url):
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    return hooks.wait(lambda e: e["event"] == "upload.complete" and e["upload"] == upload_id)


def main():
    report = {}
    hooks = Hooks()
    with tempfile.TemporaryDirectory(prefix="hoard-tuspy-") as tmp:
        store = os.path.join(tmp, "store")
        port = free_port()
        front = Cluster if SERVERS > 1 else Server
        server = front(store, port, hooks.url)
        client = tus.TusClient(server.url + "/v1/tus/",
                               headers={"Authorization": "Bearer " + TOKEN})

        # 1. A 100 MiB file in one PATCH (tuspy's default, like tus-js-client's).
        v1 = mixed(SIZE, 1)
        p1 = os.path.join(tmp, "v1.img")
        with open(p1, "wb") as f:
            f.write(v1)
        t = time.time()
        ev1 = completed(hooks, upload(client, p1, "disk.img"))
        report["v1_seconds"] = round(time.time() - t, 2)
        assert ev1["file_id"] and ev1["size"] == SIZE, ev1
        assert download(server.url, "disk.img") == v1, "v1 came back different"

        # 2. An edited copy, 8 MiB PATCHes with sha1 checksums: all of it crosses the wire
        # (tus sends every byte), only the edited chunks are stored.
        v2 = edit(v1, 20, 2)
        p2 = os.path.join(tmp, "v2.img")
        with open(p2, "wb") as f:
            f.write(v2)
        t = time.time()
        ev2 = completed(hooks, upload(client, p2, "disk.img", chunk_size=8 * MIB,
                                      upload_checksum=True))
        report["v2_seconds"] = round(time.time() - t, 2)
        assert download(server.url, "disk.img") == v2, "v2 came back different"
        assert download(server.url, "disk.img@1") == v1, "v1 changed"
        report["v2_size"] = len(v2)
        report["v2_bytes_sent"] = ev2["bytes_sent"]
        report["v2_new_bytes"] = ev2["new_bytes"]
        assert ev2["bytes_sent"] == len(v2), ev2
        assert ev2["new_bytes"] < len(v2) * 0.05, ev2

        # 3. Resume across a server kill -9: three 4 MiB PATCHes, kill, restart, resume.
        v3 = edit(v2, 5, 3)
        p3 = os.path.join(tmp, "v3.img")
        with open(p3, "wb") as f:
            f.write(v3)
        u = client.uploader(p3, chunk_size=4 * MIB, metadata={"filename": "disk.img"})
        for _ in range(3):
            u.upload_chunk()
        assert u.offset == 12 * MIB, u.offset
        server.kill()
        if SERVERS == 1:
            server = Server(store, port, hooks.url)
        client = tus.TusClient(server.url + "/v1/tus/",
                               headers={"Authorization": "Bearer " + TOKEN})
        resumed = client.uploader(p3, url=u.url, chunk_size=32 * MIB)
        report["v3_offset_after_kill"] = resumed.offset
        assert resumed.offset == 12 * MIB, resumed.offset
        resumed.upload()
        ev3 = completed(hooks, u.url)
        # This process saw only the end of the stream: the id was hashed out of the store.
        assert ev3["size"] == len(v3), ev3
        assert download(server.url, "disk.img") == v3, "v3 came back different"
        assert hashlib.sha256(download(server.url, "disk.img@2")).digest() == \
            hashlib.sha256(v2).digest()
        if SERVERS > 1:
            each = server.requests_each()
            report["requests_per_server"] = each
            assert all(n > 0 for n in each), each
        server.stop()

    name = "tus-report-cluster.json" if SERVERS > 1 else "tus-report.json"
    out = os.path.join(ROOT, "target", name)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print("tuspy: all checks passed;", json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback
        traceback.print_exc()
        sys.exit(1)
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
