//! Several `hoard serve` processes on one bucket store (real SeaweedFS and PostgreSQL, from
//! `.ci/remote.sh`) behind a real round-robin proxy (HAProxy from Debian), all on loopback:
//! any request may land on any server, and the answer is the same.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hoard::client::{Client, PullOptions};
use reqwest::{Method as M, StatusCode};

use crate::integration::data::{edit, mixed};
use crate::integration::engines;
use crate::integration::net::{Api, ChildServer, pull, push, push_edit_and_pull};
use crate::integration::remote_store::remote;
use crate::integration::support::{Scratch, b3, ok};

/// `n` servers on one bucket store and HAProxy in front of them, each stopped by PID when
/// dropped.
pub struct Cluster {
    pub servers: Vec<ChildServer>,
    pub bucket: String,
    pub index: String,
    /// What each server's `serve` is given besides `--listen`.
    args: Vec<String>,
    /// The proxy's URL.
    pub url: String,
    proxy: Child,
    _dir: Scratch,
}

impl Cluster {
    /// Starts it on a fresh store, or returns `None` (with a message) when no engines or no
    /// `haproxy` are given.
    pub fn start(test: &str, n: usize) -> Option<Cluster> {
        Self::start_with(test, n, &[])
    }

    /// As [`Cluster::start`], each server's `serve` given `args`.
    pub fn start_with(test: &str, n: usize, args: &[&str]) -> Option<Cluster> {
        let (Some(bucket), Some(index)) = (engines::bucket(test), engines::index(test)) else {
            return None;
        };
        if Command::new("haproxy").arg("-v").output().is_err() {
            eprintln!("no haproxy: skipping {test} (.ci/remote.sh installs it)");
            return None;
        }
        ok(remote(&bucket, &index).arg("init"));
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let servers: Vec<ChildServer> = (0..n)
            .map(|_| ChildServer::start_at(remote(&bucket, &index), "127.0.0.1:0", &args))
            .collect();
        let dir = Scratch::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Each request is balanced on its own (the server side of a connection is closed
        // after every response), so consecutive requests of one client go to different
        // servers; a request that cannot reach a server is sent to another, and a server
        // that stops answering is taken out until it answers again.
        // With no server up, the proxy's own 503 says so in hoard's error format.
        let unavailable = dir.file("503.http", UNAVAILABLE.as_bytes());
        let mut config = format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n  \
             timeout server 120s\n  option http-server-close\n  retries 3\n  \
             option redispatch\n  errorfile 503 {}\n\
             frontend in\n  bind 127.0.0.1:{port}\n  default_backend hoard\n\
             backend hoard\n  balance roundrobin\n  option httpchk GET /healthz\n",
            unavailable.display()
        );
        for (i, s) in servers.iter().enumerate() {
            let addr = s.url.trim_start_matches("http://");
            config.push_str(&format!(
                "  server s{i} {addr} check inter 300ms fall 1 rise 1\n"
            ));
        }
        let cfg = dir.file("haproxy.cfg", config.as_bytes());
        let proxy = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let cluster = Cluster {
            servers,
            bucket,
            index,
            args,
            url: format!("http://127.0.0.1:{port}"),
            proxy,
            _dir: dir,
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the proxy did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let api = Api::from_url(&cluster.url);
        assert_eq!(api.call(api.req(M::GET, "/healthz")).0, StatusCode::OK);
        Some(cluster)
    }

    /// Kills server `i` (SIGKILL) and starts another on the same address, as an operator's
    /// supervisor would.
    pub fn kill_and_restart(&mut self, i: usize) {
        let dead = self.servers.remove(i);
        let addr = dead.url.trim_start_matches("http://").to_owned();
        dead.kill();
        let new = ChildServer::start_at(remote(&self.bucket, &self.index), &addr, &self.args);
        self.servers.insert(i, new);
    }

    /// Stops server `i` as an upgrade would (SIGTERM: it drains its requests), then starts
    /// another on the same address and waits until it answers `/healthz`.
    pub fn terminate_and_restart(&mut self, i: usize) {
        let old = self.servers.remove(i);
        let addr = old.url.trim_start_matches("http://").to_owned();
        assert!(
            old.terminate(),
            "server {i} did not exit cleanly after SIGTERM"
        );
        let new = ChildServer::start_at(remote(&self.bucket, &self.index), &addr, &self.args);
        let api = Api::from_url(&new.url);
        assert_eq!(api.call(api.req(M::GET, "/healthz")).0, StatusCode::OK);
        self.servers.insert(i, new);
    }

    /// Runs `work` on a thread and kills server `victim` (kill -9, then started again on its
    /// address) once `started` says the work is under way (waiting at most a minute), and
    /// `delay` later. Returns what `work` returned; panics if it had ended before the kill
    /// (the trial would test nothing).
    pub fn kill_during<T: Send>(
        &mut self,
        victim: usize,
        delay: Duration,
        started: impl Fn(&Cluster) -> bool,
        work: impl FnOnce() -> T + Send,
    ) -> T {
        let (out, done_at, killed_at) = std::thread::scope(|scope| {
            let working = scope.spawn(|| (work(), Instant::now()));
            let t = Instant::now();
            while !started(self) && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(delay);
            let killed_at = Instant::now();
            self.kill_and_restart(victim);
            let (out, at) = working.join().unwrap();
            (out, at, killed_at)
        });
        assert!(
            killed_at < done_at,
            "the work ended before the kill; the trial tests nothing"
        );
        out
    }

    /// `fsck --json` of the store, asserted clean; returns the report.
    pub fn fsck_clean(&self) -> serde_json::Value {
        let r = crate::integration::remote_store::json(&ok(
            remote(&self.bucket, &self.index).args(["fsck", "--json"])
        ));
        assert_eq!(r["clean"], true, "{r}");
        r
    }

    /// The sum of the values of the `/metrics` series named `name` (any labels), per server.
    fn per_server(&self, name: &str) -> Vec<u64> {
        self.servers
            .iter()
            .map(|s| {
                let api = Api::from_url(&s.url);
                let (_, _, body) = api.call(api.req(M::GET, "/metrics"));
                String::from_utf8_lossy(&body)
                    .lines()
                    .filter(|l| {
                        l.strip_prefix(name)
                            .is_some_and(|r| r.starts_with([' ', '{']))
                    })
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                    .sum()
            })
            .collect()
    }

    /// The sum over the servers of the counter `name` (a restarted server counts from zero
    /// again).
    pub fn metric(&self, name: &str) -> u64 {
        self.per_server(name).iter().sum()
    }

    /// Requests each server has answered so far.
    pub fn requests(&self) -> Vec<u64> {
        self.per_server("hoard_http_requests_total")
    }
}

/// The proxy's answer when no server is up: hoard's error body, so clients say what it says.
const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\n\
Retry-After: 5\r\n\
Cache-Control: no-cache\r\n\
Connection: close\r\n\
\r\n\
{\"error\":\"unavailable\",\"message\":\"no hoard server behind the load balancer is up: try again shortly\"}\n";

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

#[test]
fn cluster_any_request_lands_on_any_server_with_the_same_answer() {
    let Some(cluster) = Cluster::start("cluster_any", 3) else {
        return;
    };
    let s = Scratch::new();
    let v1 = mixed(8 << 20, 101);
    let v2 = edit(&v1, 10, 102);
    // push and pull through the proxy: the session is opened, fed and completed by whichever
    // servers the proxy picks. Ten edits in 64 KiB chunks: the server that answers the
    // missing query knows what the others stored, so only the edited chunks cross.
    let c = Client::new(&cluster.url, None).unwrap();
    push_edit_and_pull(&c, &s, &v1, &v2, 8);
    let spread = cluster.requests();
    assert!(
        spread.iter().all(|&n| n >= 3),
        "every server answered some of it: {spread:?}"
    );
    // Every server answers for what any of them stored: a ranged GET on each.
    for server in &cluster.servers {
        let api = Api::from_url(&server.url);
        let (st, _, part) = api.call(
            api.req(M::GET, "/v1/files/disk.img")
                .header("Range", "bytes=3000000-3999999"),
        );
        assert_eq!(st, StatusCode::PARTIAL_CONTENT, "{}", server.url);
        assert!(part == v2[3_000_000..4_000_000], "{}", server.url);
    }
    // A whole-file PUT through the proxy, read back from each server.
    let small = mixed(300_000, 103);
    let api = Api::from_url(&cluster.url);
    let (st, _, _) = api.call(api.req(M::PUT, "/v1/files/small.bin").body(small.clone()));
    assert_eq!(st, StatusCode::CREATED);
    for server in &cluster.servers {
        let api = Api::from_url(&server.url);
        let (st, _, got) = api.call(api.req(M::GET, "/v1/files/small.bin"));
        assert_eq!(st, StatusCode::OK);
        assert!(got == small, "{}", server.url);
    }
}

#[test]
fn cluster_tus_upload_moves_between_servers() {
    let Some(cluster) = Cluster::start("cluster_tus", 3) else {
        return;
    };
    let data = mixed(5 << 20, 111);
    let tus = |i: usize| Api::from_url(&cluster.servers[i].url);
    let with = |rb: reqwest::RequestBuilder| rb.header("Tus-Resumable", "1.0.0");
    // Created on the first server...
    let (st, h, _) = tus(0).call(with(
        tus(0)
            .req(M::POST, "/v1/tus/")
            .header("Upload-Length", data.len().to_string())
            .header("Upload-Metadata", "filename dHVzLmJpbg=="),
    ));
    assert_eq!(st, StatusCode::CREATED);
    let location = h["location"].to_str().unwrap().to_owned();
    let patch = |i: usize, from: usize, to: usize| {
        tus(i).call(with(
            tus(i)
                .req(M::PATCH, &location)
                .header("Upload-Offset", from.to_string())
                .header("Content-Type", "application/offset+octet-stream")
                .body(data[from..to].to_vec()),
        ))
    };
    let offset = |i: usize| {
        let (st, h, _) = tus(i).call(with(tus(i).req(M::HEAD, &location)));
        assert_eq!(st, StatusCode::OK);
        h["upload-offset"]
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    // ... a first piece on the second, whose durable offset the third reports ...
    assert_eq!(patch(1, 0, 2_000_001).0, StatusCode::NO_CONTENT);
    assert_eq!(offset(2), 2_000_001);
    // ... a piece at a stale offset is refused wherever it lands ...
    assert_eq!(patch(0, 0, 10).0, StatusCode::CONFLICT);
    // ... and the rest on the third; every server then reports it whole.
    assert_eq!(patch(2, 2_000_001, data.len()).0, StatusCode::NO_CONTENT);
    for i in 0..3 {
        assert_eq!(offset(i), data.len());
    }
    let api = Api::from_url(&cluster.url);
    let (st, _, got) = api.call(api.req(M::GET, "/v1/files/tus.bin"));
    assert_eq!(st, StatusCode::OK);
    assert!(got == data, "the upload reads back byte-identical");
}

#[test]
fn cluster_server_killed_mid_push_loses_nothing_and_the_push_completes() {
    let Some(mut cluster) = Cluster::start("cluster_kill", 3) else {
        return;
    };
    let s = Scratch::new();
    let trials = 10;
    for trial in 0..trials {
        let data = mixed(48 << 20, 120 + trial);
        let f = s.file(&format!("f{trial}"), &data);
        let name = format!("f{trial}");
        let c = Client::new(&cluster.url, None).unwrap();
        // One server dies (kill -9) while the push runs through the proxy and is started
        // again; the client's retries land on the others meanwhile.
        let victim = trial as usize % cluster.servers.len();
        let received = cluster.metric("hoard_chunks_received_total");
        // Once chunks arrive (the push is under way), a little later each trial.
        let pushed = cluster.kill_during(
            victim,
            Duration::from_millis(20 * (trial % 3)),
            |cl| cl.metric("hoard_chunks_received_total") > received,
            || push(&c, &f, &name),
        );
        let r = pushed.unwrap_or_else(|e| panic!("trial {trial}: the push failed: {e}"));
        assert_eq!(r.id.to_hex(), b3(&data), "trial {trial}");
        let out = s.path(&format!("out{trial}"));
        pull(&c, &name, &out, PullOptions::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == data, "trial {trial}");
    }
    // Nothing acknowledged is lost and nothing is damaged.
    cluster.fsck_clean();
}

#[test]
fn cluster_hooks_fire_once_per_upload_not_once_per_server() {
    let hooks = crate::integration::net::HookReceiver::start();
    let Some(cluster) = Cluster::start_with("cluster_hooks", 3, &["--hook-url", &hooks.url]) else {
        return;
    };
    let s = Scratch::new();
    // A push (a session opened, fed and completed by whichever servers the proxy picks),
    // a whole-file PUT, and a tus upload created on one server and finished on another.
    let data = mixed(24 << 20, 131);
    let c = Client::new(&cluster.url, None).unwrap();
    let pushed = push(&c, &s.file("p.bin", &data), "p.bin").unwrap();
    let api = Api::from_url(&cluster.url);
    let (st, _, _) = api.call(
        api.req(M::PUT, "/v1/files/c.bin")
            .body(data[..100_000].to_vec()),
    );
    assert_eq!(st, StatusCode::CREATED);
    let (a, b) = (
        Api::from_url(&cluster.servers[0].url),
        Api::from_url(&cluster.servers[1].url),
    );
    let (st, h, _) = a.call(
        a.req(M::POST, "/v1/tus/")
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "300000"),
    );
    assert_eq!(st, StatusCode::CREATED);
    let location = h["location"].to_str().unwrap().to_owned();
    let (st, _, _) = b.call(
        b.req(M::PATCH, &location)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .body(data[..300_000].to_vec()),
    );
    assert_eq!(st, StatusCode::NO_CONTENT);
    // Three uploads: a start and a complete each, from whichever server saw it happen;
    // a second's wait shows no server sends them again.
    hooks.wait_until(|evs| evs.len() >= 6, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let all = hooks.wait_until(|_| true, Duration::from_secs(1));
    for source in ["session", "put", "tus"] {
        for event in ["upload.start", "upload.complete"] {
            let n = all
                .iter()
                .filter(|e| e["source"] == source && e["event"] == event)
                .count();
            assert_eq!(n, 1, "{event} from {source}: {all:#?}");
        }
    }
    assert_eq!(all.len(), 6, "{all:#?}");
    // The push's chunk batches went to every server; the one that completed it reports all
    // their bytes (the push's bytes less its manifest), not only its own.
    let done = all
        .iter()
        .find(|e| e["source"] == "session" && e["event"] == "upload.complete")
        .unwrap();
    let sent = done["bytes_sent"].as_u64().unwrap();
    let manifest = pushed.chunks * 64 + 4096;
    assert!(
        sent <= pushed.bytes_sent && sent + manifest >= pushed.bytes_sent,
        "the hook says {sent} bytes, the client sent {} with its manifest",
        pushed.bytes_sent
    );
}

#[test]
fn cluster_tus_patch_in_progress_on_one_server_holds_the_upload_on_every_server() {
    use std::io::{Read, Write};

    let Some(cluster) = Cluster::start("cluster_tus_busy", 2) else {
        return;
    };
    let data = mixed(1_000_000, 151);
    let (a, b) = (
        Api::from_url(&cluster.servers[0].url),
        Api::from_url(&cluster.servers[1].url),
    );
    let (st, h, _) = a.call(
        a.req(M::POST, "/v1/tus/")
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", data.len().to_string())
            .header("Upload-Metadata", "filename YnVzeS5iaW4="),
    );
    assert_eq!(st, StatusCode::CREATED);
    let location = h["location"].to_str().unwrap().to_owned();
    // A PATCH on the first server whose body stops a third of the way in: that server is
    // still reading it ...
    let addr = cluster.servers[0]
        .url
        .trim_start_matches("http://")
        .to_owned();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    slow.write_all(&data[..300_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // ... so a PATCH of the same upload on the second server waits for it, and is told the
    // upload is busy rather than writing beside it.
    let (st, _, _) = b.call(
        b.req(M::PATCH, &location)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .body(data.clone()),
    );
    assert_eq!(st, StatusCode::LOCKED, "a second writer on another server");
    // The first one finishes; every server then reports it whole, and it reads back.
    slow.write_all(&data[300_000..]).unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 204",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    for api in [&a, &b] {
        let (st, h, _) = api.call(api.req(M::HEAD, &location).header("Tus-Resumable", "1.0.0"));
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h["upload-offset"].to_str().unwrap(), data.len().to_string());
    }
    let (st, _, got) = b.call(b.req(M::GET, "/v1/files/busy.bin"));
    assert_eq!(st, StatusCode::OK);
    assert!(got == data, "reads back byte-identical");
}

#[test]
fn cluster_eight_clients_push_overlapping_files_while_gc_runs_with_no_grace() {
    let Some(cluster) = Cluster::start_with("cluster_gc_loop", 3, &["--gc-grace", "0s"]) else {
        return;
    };
    let s = Scratch::new();
    let base = mixed(6 << 20, 161);
    let files: Vec<(String, Vec<u8>)> = (0..8u64)
        .map(|i| (format!("c{i}"), edit(&base, 20, 170 + i)))
        .collect();
    let paths: Vec<_> = files.iter().map(|(n, d)| s.file(n, d)).collect();
    let pushing = std::sync::atomic::AtomicUsize::new(files.len());
    let gcs = std::thread::scope(|scope| {
        for ((name, _), path) in files.iter().zip(&paths) {
            let (url, pushing) = (&cluster.url, &pushing);
            scope.spawn(move || {
                let c = Client::new(url, None).unwrap();
                let r = push(&c, path, name);
                pushing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                r.unwrap_or_else(|e| panic!("{name}: {e}"));
            });
        }
        // gc with no grace, again and again on one server, while they push (bounded).
        let api = Api::from_url(&cluster.servers[0].url);
        let mut gcs = 0;
        while pushing.load(std::sync::atomic::Ordering::SeqCst) > 0 && gcs < 300 {
            let (st, _, body) = api.call(api.req(M::POST, "/v1/gc"));
            assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            gcs += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        gcs
    });
    assert!(gcs > 0, "gc ran while the clients pushed");
    let c = Client::new(&cluster.url, None).unwrap();
    for (name, data) in &files {
        let out = s.path(&format!("{name}.out"));
        pull(&c, name, &out, PullOptions::default()).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == *data,
            "{name} byte-identical"
        );
    }
    // After a compaction of every pack with dead bytes in it, each distinct chunk is stored
    // once: the packs hold exactly the indexed entries.
    ok(remote(&cluster.bucket, &cluster.index).args(["gc", "--min-dead", "0"]));
    let r = cluster.fsck_clean();
    assert_eq!(r["unreferenced_entries"], 0, "{r}");
    assert_eq!(r["entries"], r["chunks_ok"], "{r}");
}

#[test]
fn cluster_server_killed_mid_gc_loses_nothing_and_another_gc_runs() {
    let Some(mut cluster) = Cluster::start_with("cluster_kill_gc", 3, &["--gc-grace", "0s"]) else {
        return;
    };
    let s = Scratch::new();
    let c = Client::new(&cluster.url, None).unwrap();
    let keep = mixed(8 << 20, 181);
    push(&c, &s.file("keep", &keep), "keep").unwrap();
    // gcs the kill cut off before they answered.
    let cut = std::sync::atomic::AtomicUsize::new(0);
    for trial in 0..10u64 {
        // Garbage for gc to take: a file pushed and removed.
        let junk = mixed(4 << 20, 190 + trial);
        push(&c, &s.file(&format!("junk{trial}"), &junk), "junk").unwrap();
        ok(remote(&cluster.bucket, &cluster.index).args(["rm", "junk"]));
        // gc on one server, killed (kill -9) a little later each trial, then started again.
        let victim = trial as usize % cluster.servers.len();
        let url = cluster.servers[victim].url.clone();
        let cut = &cut;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                // Killed mid-request (no answer) or done: either way nothing may be lost.
                let answer = crate::integration::net::rt().block_on(async {
                    reqwest::Client::new()
                        .post(format!("{url}/v1/gc"))
                        .send()
                        .await
                        .map(|r| r.status())
                });
                match answer {
                    Ok(st) => assert!(st.is_success() || st.is_server_error(), "{st}"),
                    Err(_) => {
                        cut.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(10 * trial));
            cluster.kill_and_restart(victim);
        });
        // The dead gc's lock went with it: a gc on another server runs to the end.
        let other = Api::from_url(&cluster.servers[(victim + 1) % 3].url);
        let (st, _, body) = other.call(other.req(M::POST, "/v1/gc"));
        assert_eq!(
            st,
            StatusCode::OK,
            "trial {trial}: {}",
            String::from_utf8_lossy(&body)
        );
        let out = s.path(&format!("keep{trial}"));
        pull(&c, "keep", &out, PullOptions::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == keep, "trial {trial}");
    }
    eprintln!(
        "cluster_kill_gc: {} of 10 gcs cut off by the kill",
        cut.load(std::sync::atomic::Ordering::SeqCst)
    );
    cluster.fsck_clean();
}

/// Uploads `data` as `name` over tus through `api` the way the protocol's clients do: create,
/// send `piece` bytes at a time, and after any failed request ask where the upload stands
/// (`HEAD`: its durable offset) and send on from there. `acked` follows the offset the
/// server acknowledged. Returns how many requests failed; panics past two minutes.
fn tus_resuming(
    api: &Api,
    data: &[u8],
    name: &str,
    piece: usize,
    acked: &std::sync::atomic::AtomicUsize,
) -> usize {
    use base64::Engine as _;
    use std::sync::atomic::Ordering;

    let tus = |m: M, path: &str| api.req(m, path).header("Tus-Resumable", "1.0.0");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut failures = 0;
    let mut failed = |what: String| {
        failures += 1;
        assert!(
            Instant::now() < deadline,
            "{name}: the upload is stuck: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let offset_of = |h: &reqwest::header::HeaderMap| -> usize {
        h["upload-offset"].to_str().unwrap().parse().unwrap()
    };
    let meta = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode(name)
    );
    let location = loop {
        let create = tus(M::POST, "/v1/tus/")
            .header("Upload-Length", data.len().to_string())
            .header("Upload-Metadata", &meta);
        match api.try_call(create) {
            Ok((StatusCode::CREATED, h, _)) => break h["location"].to_str().unwrap().to_owned(),
            other => failed(format!("create: {other:?}")),
        }
    };
    let mut offset = 0;
    while offset < data.len() {
        let to = (offset + piece).min(data.len());
        let patch = tus(M::PATCH, &location)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(data[offset..to].to_vec());
        match api.try_call(patch) {
            Ok((StatusCode::NO_CONTENT, h, _)) => offset = offset_of(&h),
            other => {
                failed(format!("PATCH at {offset}: {other:?}"));
                offset = loop {
                    match api.try_call(tus(M::HEAD, &location)) {
                        Ok((StatusCode::OK, h, _)) => break offset_of(&h),
                        other => failed(format!("HEAD: {other:?}")),
                    }
                };
            }
        }
        acked.store(offset, Ordering::SeqCst);
    }
    failures
}

#[test]
fn cluster_server_killed_mid_tus_upload_loses_nothing_and_the_upload_completes() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let Some(mut cluster) = Cluster::start("cluster_kill_tus", 3) else {
        return;
    };
    let api = Api::from_url(&cluster.url);
    let mut failed_requests = 0;
    for trial in 0..10u64 {
        let data = mixed(24 << 20, 210 + trial);
        let name = format!("t{trial}.bin");
        let acked = AtomicUsize::new(0);
        let victim = trial as usize % cluster.servers.len();
        // One server dies (kill -9) once the upload is under way, a little later each
        // trial, and is started again; the client resumes through the proxy.
        let failures = cluster.kill_during(
            victim,
            Duration::ZERO,
            |_| acked.load(Ordering::SeqCst) >= (1 + trial as usize % 4) << 20,
            || tus_resuming(&api, &data, &name, 1 << 20, &acked),
        );
        failed_requests += failures;
        let (st, _, got) = api.call(api.req(M::GET, &format!("/v1/files/{name}")));
        assert_eq!(st, StatusCode::OK, "trial {trial}");
        assert!(got == data, "trial {trial}: reads back byte-identical");
    }
    eprintln!("tus kill trials: {failed_requests} requests failed and were resumed");
    cluster.fsck_clean();
}

#[test]
fn cluster_rolling_restart_keeps_serving() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some(mut cluster) = Cluster::start("cluster_rolling", 3) else {
        return;
    };
    let s = Scratch::new();
    let stop = AtomicBool::new(false);
    let url = cluster.url.clone();
    // A client pushes one file after another while each server in turn is stopped (SIGTERM:
    // it drains) and started again, as an upgrade across compatible versions does.
    let pushed = std::thread::scope(|scope| {
        let pushing = scope.spawn(|| {
            let c = Client::new(&url, None).unwrap();
            let mut pushed = Vec::new();
            for n in 0..200u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let data = mixed(6 << 20, 300 + n);
                let name = format!("r{n}");
                let f = s.file(&name, &data);
                let r = push(&c, &f, &name)
                    .unwrap_or_else(|e| panic!("push {n} during the rolling restart: {e}"));
                assert_eq!(r.id.to_hex(), b3(&data));
                pushed.push((name, data));
            }
            pushed
        });
        for i in 0..cluster.servers.len() {
            std::thread::sleep(Duration::from_millis(300));
            cluster.terminate_and_restart(i);
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        pushing.join().unwrap()
    });
    assert!(pushed.len() >= 3, "pushes ran across the restarts");
    let c = Client::new(&cluster.url, None).unwrap();
    for (name, data) in &pushed {
        let out = s.path(&format!("{name}.out"));
        pull(&c, name, &out, PullOptions::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == *data, "{name}");
    }
}

#[test]
fn cluster_server_of_another_schema_version_or_params_is_refused_and_taken_out() {
    let Some(cluster) = Cluster::start("cluster_schema", 2) else {
        return;
    };
    let s = Scratch::new();
    let c = Client::new(&cluster.url, None).unwrap();
    let data = mixed(2 << 20, 401);
    push(&c, &s.file("v", &data), "v").unwrap();
    // Chunker params are the store's, read by every server from it: a command asking for
    // others is refused, and nothing changes for the servers.
    let out = remote(&cluster.bucket, &cluster.index)
        .args(["init", "--min", "8K", "--avg", "32K", "--max", "128K"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("chunker params are fixed per store"),
        "{err}"
    );
    let version: u32 = engines::sql_value(&cluster.index, "SELECT version FROM hoard_schema")
        .parse()
        .unwrap();
    // A newer hoard has migrated the database: this binary is the older one now.
    engines::sql(
        &cluster.index,
        "UPDATE hoard_schema SET version = version + 1",
    );
    let says = format!(
        "has format version {}, this hoard understands {version}; upgrade hoard",
        version + 1
    );
    // A server of the older version does not start ...
    let out = remote(&cluster.bucket, &cluster.index)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&says), "{err}");
    // ... the running ones answer /healthz 503 saying why (so the proxy takes them out) ...
    for server in &cluster.servers {
        let api = Api::from_url(&server.url);
        let t = Instant::now();
        let body = loop {
            let (st, _, body) = api.call_json(api.req(M::GET, "/healthz"));
            if st == StatusCode::SERVICE_UNAVAILABLE {
                break body;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "/healthz stayed {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(body["error"], "other_version", "{body}");
        assert!(body["message"].as_str().unwrap().contains(&says), "{body}");
        // ... and run no gc on a schema they do not know.
        let (st, body) = api.json(M::POST, "/v1/gc");
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    let api = Api::from_url(&cluster.url);
    let t = Instant::now();
    loop {
        let (st, body) = api.json(M::GET, "/v1/files");
        if st == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                body["error"], "unavailable",
                "the proxy's own answer: {body}"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the proxy still served: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A schema upgrade waits until no process of another version uses the database: a
    // connection of an older hoard (by its application_name) blocks this binary's migration.
    let older = format!(
        "{}?application_name=hoard/schema{}",
        cluster.index,
        version - 1
    );
    let rt = crate::integration::net::rt();
    let (held, conn) = rt
        .block_on(tokio_postgres::connect(&older, tokio_postgres::NoTls))
        .unwrap();
    let conn = rt.spawn(conn);
    engines::sql(
        &cluster.index,
        &format!("UPDATE hoard_schema SET version = {}", version - 1),
    );
    let out = remote(&cluster.bucket, &cluster.index)
        .arg("ls")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "has schema version {} and this hoard writes {version}",
                version - 1
            ))
            && err.contains("a schema upgrade is not a rolling restart"),
        "{err}"
    );
    drop(held);
    let _ = rt.block_on(conn);
    // Back at this binary's version, the servers answer again and lost nothing.
    engines::sql(
        &cluster.index,
        &format!("UPDATE hoard_schema SET version = {version}"),
    );
    for server in &cluster.servers {
        let api = Api::from_url(&server.url);
        let t = Instant::now();
        while api.call(api.req(M::GET, "/healthz")).0 != StatusCode::OK {
            assert!(t.elapsed() < Duration::from_secs(10), "/healthz stayed 503");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = s.path("v.out");
    pull(&c, "v", &out, PullOptions::default()).unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
}

#[test]
fn cluster_periodic_gc_on_every_server_runs_about_once_an_interval_between_them() {
    let started = Instant::now();
    let Some(cluster) = Cluster::start_with(
        "cluster_periodic_gc",
        3,
        &["--gc-interval", "1s", "--gc-grace", "0s"],
    ) else {
        return;
    };
    // Some garbage, so each gc has work to do.
    let s = Scratch::new();
    let c = Client::new(&cluster.url, None).unwrap();
    push(&c, &s.file("junk", &mixed(4 << 20, 501)), "junk").unwrap();
    let api = Api::from_url(&cluster.url);
    assert!(
        api.call(api.req(M::DELETE, "/v1/files/junk"))
            .0
            .is_success()
    );
    std::thread::sleep(Duration::from_secs(6));
    let (runs, skipped) = (
        cluster.metric("hoard_gc_runs_total"),
        cluster.metric("hoard_gc_skipped_total"),
    );
    let secs = started.elapsed().as_secs();
    eprintln!("{secs} s, three servers each with a 1 s timer: {runs} gc runs, {skipped} skipped");
    // Every server's timer fires each second (about 3 ticks a second between them), but a
    // gc starts only once the last one in any process finished at least a second ago.
    assert!(runs >= 2, "gc ran: {runs}");
    assert!(
        runs <= secs + 1,
        "{runs} runs in {secs} s: the servers each ran their own"
    );
    assert!(skipped >= runs, "{skipped} skipped, {runs} ran");
}
