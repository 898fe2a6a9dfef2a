//! Cluster benchmark: one and three `hoard serve` processes on one bucket store (SeaweedFS +
//! PostgreSQL on loopback) behind HAProxy, in one run on the same machine.
//!
//! Run with `cargo bench --bench cluster` (needs `haproxy`: `apt-get install haproxy`). The
//! engines are the ones `HOARD_TEST_BUCKET`/`HOARD_TEST_INDEX` name, or a pair it starts with
//! `.ci/engines.sh` and stops by PID. Inputs as `benches/remote.rs` (`HOARD_BENCH_MIB`,
//! `HOARD_BENCH_DIR`), plus eight distinct files of `HOARD_BENCH_MIB / 4` MiB. Per run
//! (`HOARD_BENCH_RUNS`) and per cluster size, on a fresh store, every client going through the
//! proxy (each request balanced on its own):
//!
//! - `push v1`, `push v2`, `pull v2` (wall time of the CLI);
//! - eight pushes of the distinct files at once (wall time until the last ends), while a probe
//!   asks the missing query of 1000 ids every 50 ms: its latencies under load;
//! - 300 such queries one after another on the idle cluster: p50 and p99;
//! - the missing query of 1 000 000 ids, half stored (median of three), once every server's id
//!   replica holds the store;
//! - with three servers, the cross-server "present" lag: a new chunk uploaded to one server,
//!   then asked about at once on another, 100 times: how often it was already present, and
//!   how long until it was;
//! - each server's peak RSS.
//!
//! Medians over the runs; results go to stdout and `target/bench-cluster.json`. Every process
//! it starts is stopped by PID.

#[path = "../tests/integration/data.rs"]
mod generate;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hoard::Hash;
use support::engines::{Engines, engine_env, timed_hoard};
use support::{env_num, have, mbps, median, prime, warm};

/// N servers on one store and HAProxy in front of them.
struct Front {
    servers: Vec<support::Server>,
    proxy: Child,
    url: String,
}

impl Front {
    fn start(hoard: &str, bucket: &str, index: &str, n: usize, dir: &Path) -> Front {
        let servers: Vec<support::Server> = (0..n)
            .map(|_| {
                support::start_server_with(
                    hoard,
                    &["--store", bucket, "--index", index],
                    &engine_env(),
                )
            })
            .collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cfg = format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 300s\n  \
             timeout server 300s\n  option http-server-close\n  retries 3\n  \
             option redispatch\n\
             frontend in\n  bind 127.0.0.1:{port}\n  default_backend hoard\n\
             backend hoard\n  balance roundrobin\n  option httpchk GET /healthz\n"
        );
        for (i, s) in servers.iter().enumerate() {
            let addr = s.url.trim_start_matches("http://");
            cfg.push_str(&format!("  server s{i} {addr} check inter 1s\n"));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("haproxy.cfg");
        let proxy = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let url = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "haproxy did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Front {
            servers,
            proxy,
            url,
        }
    }

    /// Stops everything; returns the servers' peak RSS in KiB.
    fn stop(mut self) -> Vec<u64> {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        self.servers.drain(..).map(support::stop_server).collect()
    }
}

/// A blocking HTTP client for the probes.
struct Http {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Http {
    fn new() -> Self {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// POSTs a binary body; returns the answer's body.
    fn post(&self, url: &str, body: Vec<u8>) -> Vec<u8> {
        self.rt.block_on(async {
            let r = self
                .http
                .post(url)
                .header("content-type", hoard::wire::BINARY)
                .body(body)
                .send()
                .await
                .expect("request");
            assert!(r.status().is_success(), "{url}: {}", r.status());
            r.bytes().await.expect("body").to_vec()
        })
    }

    fn get(&self, url: &str) -> String {
        self.rt.block_on(async {
            self.http
                .get(url)
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body")
        })
    }
}

/// Ids of the chunks of `name`'s manifest, from the server at `url`.
fn manifest_ids(http: &Http, url: &str, name: &str) -> Vec<Hash> {
    let m: serde_json::Value =
        serde_json::from_str(&http.get(&format!("{url}/v1/manifests/{name}"))).expect("manifest");
    m["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// `n` ids, the first half from `stored` (cycled), the rest made up from `salt`.
fn query(stored: &[Hash], n: usize, salt: u64) -> Vec<u8> {
    let mut ids: Vec<Hash> = stored.iter().copied().cycle().take(n / 2).collect();
    let mut i = 0u64;
    while ids.len() < n {
        ids.push(Hash::of(&[salt.to_le_bytes(), i.to_le_bytes()].concat()));
        i += 1;
    }
    hoard::wire::pack_ids(&ids)
}

/// Waits until every server's id replica holds at least `at_least` ids.
fn replicas_built(http: &Http, front: &Front, at_least: u64) {
    let t = Instant::now();
    for s in &front.servers {
        loop {
            let ids: u64 = http
                .get(&format!("{}/metrics", s.url))
                .lines()
                .find_map(|l| l.strip_prefix("hoard_id_replica_ids "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if ids >= at_least {
                break;
            }
            assert!(t.elapsed().as_secs() < 600, "no id replica after 10 min");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// p50 and p99 of `v` (seconds) in ms.
fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1000.0;
    (at(0.5), at(0.99))
}

/// One figure of [`Measured`].
type Field = fn(&Measured) -> f64;

/// What one cluster size measured in one run.
#[derive(Default, Clone)]
struct Measured {
    push_v1: f64,
    push_v2: f64,
    pull_v2: f64,
    concurrent: f64,
    loaded_p50: f64,
    loaded_p99: f64,
    idle_p50: f64,
    idle_p99: f64,
    missing_1m: f64,
    rss_kib: u64,
    /// Lag trials where the other server said present at once, of those run.
    lag_at_once: usize,
    lag_trials: usize,
    lag_max_ms: f64,
}

/// The "present" lag: a new chunk stored through server A, asked about at once on server B.
fn present_lag(http: &Http, front: &Front, trials: usize) -> (usize, f64) {
    let (a, b) = (&front.servers[0].url, &front.servers[1].url);
    let mut at_once = 0;
    let mut max_ms: f64 = 0.0;
    for t in 0..trials {
        let data = generate::mixed(64 << 10, 9000 + t as u64);
        let id = Hash::of(&data);
        let mut frame = Vec::new();
        hoard::wire::put_frame(
            &mut frame,
            &id,
            hoard::codec::Codec::Raw,
            data.len() as u32,
            &data,
        );
        http.post(&format!("{a}/v1/chunks"), frame);
        let stored = Instant::now();
        let ask = hoard::wire::pack_ids(&[id]);
        let mut first = true;
        loop {
            let missing = http.post(&format!("{b}/v1/chunks/missing"), ask.clone());
            if missing.is_empty() {
                break;
            }
            first = false;
            assert!(
                stored.elapsed().as_secs() < 60,
                "never present on the other server"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        if first {
            at_once += 1;
        }
        max_ms = max_ms.max(stored.elapsed().as_secs_f64() * 1000.0);
    }
    (at_once, max_ms)
}

fn measure(
    hoard: &str,
    engines: &Engines,
    n: usize,
    run_no: usize,
    dir: &Path,
    v: (&str, &str),
    many: &[String],
) -> Measured {
    let (bucket, index) = engines.store(&format!("cluster{n}r{run_no}"));
    timed_hoard(hoard, &["--store", &bucket, "--index", &index, "init"], dir);
    let front = Front::start(hoard, &bucket, &index, n, dir);
    let url = front.url.clone();
    let http = Http::new();
    let mut m = Measured::default();
    let out = dir.join("pulled.bin");

    prime(dir);
    warm(Path::new(v.0));
    m.push_v1 = timed_hoard(hoard, &["push", v.0, "--server", &url, "--name", "v"], dir)
        .0
        .secs;
    prime(dir);
    warm(Path::new(v.1));
    m.push_v2 = timed_hoard(hoard, &["push", v.1, "--server", &url, "--name", "v"], dir)
        .0
        .secs;
    prime(dir);
    let _ = std::fs::remove_file(&out);
    m.pull_v2 = timed_hoard(
        hoard,
        &["pull", "v", out.to_str().unwrap(), "--server", &url],
        dir,
    )
    .0
    .secs;
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(v.1).unwrap().len()
    );
    let _ = std::fs::remove_file(&out);

    let stored = manifest_ids(&http, &url, "v");
    // Eight distinct files pushed at once, and a probe's latencies meanwhile.
    for f in many {
        warm(Path::new(f));
    }
    let probe_body = query(&stored, 1000, 1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (concurrent, loaded) = std::thread::scope(|scope| {
        let probe = scope.spawn(|| {
            let http = Http::new();
            let mut lat = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                http.post(&format!("{url}/v1/chunks/missing"), probe_body.clone());
                lat.push(t.elapsed().as_secs_f64());
                std::thread::sleep(Duration::from_millis(50));
            }
            lat
        });
        let t = Instant::now();
        let children: Vec<Child> = many
            .iter()
            .enumerate()
            .map(|(i, f)| {
                Command::new(hoard)
                    .args(["push", f, "--server", &url, "--name", &format!("c{i}")])
                    .envs(engine_env())
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("push")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a concurrent push failed");
        }
        let secs = t.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (secs, probe.join().unwrap())
    });
    m.concurrent = concurrent;
    (m.loaded_p50, m.loaded_p99) = percentiles(loaded);

    let idle: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            http.post(&format!("{url}/v1/chunks/missing"), probe_body.clone());
            t.elapsed().as_secs_f64()
        })
        .collect();
    (m.idle_p50, m.idle_p99) = percentiles(idle);

    replicas_built(&http, &front, stored.len() as u64);
    let big = query(&stored, 1_000_000, 2);
    m.missing_1m = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                http.post(&format!("{url}/v1/chunks/missing"), big.clone());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    if n > 1 {
        m.lag_trials = 100;
        (m.lag_at_once, m.lag_max_ms) = present_lag(&http, &front, m.lag_trials);
    }
    m.rss_kib = front.stop().into_iter().max().unwrap_or(0);
    m
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !have("haproxy") {
        eprintln!("the cluster bench needs haproxy: apt-get install haproxy");
        std::process::exit(1);
    }
    let engines = Engines::up();
    let mib = env_num("HOARD_BENCH_MIB", 1024);
    let runs = env_num("HOARD_BENCH_RUNS", 3);
    let hoard = env!("CARGO_BIN_EXE_hoard");
    let (_guard, dir, kept) = support::bench_dir("hoard-bench-cluster-");
    let (v1, v2) = support::inputs(&dir, kept, mib, |n| {
        let data = generate::mixed(n, 1);
        let edited = generate::edit(&data, 200, 2);
        (data, edited)
    });
    let each = (mib / 4) << 20;
    let many: Vec<String> = (0..8)
        .map(|i| {
            let p = dir.join(format!("c{i}.bin"));
            if std::fs::metadata(&p).map(|m| m.len()).ok() != Some(each as u64) {
                std::fs::write(&p, generate::mixed(each, 1000 + i)).expect("write input");
            }
            p.to_str().unwrap().to_owned()
        })
        .collect();
    let v = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let mut one = Vec::new();
    let mut three = Vec::new();
    for r in 0..runs {
        // Alternate the order, so neither size always runs on a fresher machine.
        let order: [usize; 2] = if r % 2 == 0 { [1, 3] } else { [3, 1] };
        for n in order {
            eprintln!("run {}/{runs}: {n} server(s)", r + 1);
            let m = measure(hoard, &engines, n, r, &dir, v, &many);
            if n == 1 { &mut one } else { &mut three }.push(m);
        }
    }
    let med = |ms: &[Measured], f: Field| median(ms.iter().map(f).collect());
    let size = mib << 20;
    let rows: [(&str, Field, usize); 5] = [
        ("push v1", |m| m.push_v1, size),
        ("push v2", |m| m.push_v2, size),
        ("pull v2", |m| m.pull_v2, size),
        ("8 pushes at once", |m| m.concurrent, each * 8),
        ("missing 1M ids (M ids/s)", |m| m.missing_1m, 0),
    ];
    println!(
        "\ncluster bench: {mib} MiB pair, 8 x {} MiB, {runs} run(s), medians",
        mib / 4
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "step", "1 server s", "MB/s", "3 servers", "MB/s", "3 vs 1"
    );
    let mut json = serde_json::Map::new();
    for (name, f, bytes) in rows {
        let (a, b) = (med(&one, f), med(&three, f));
        let rate = |s: f64| {
            if bytes > 0 { mbps(bytes, s) } else { 1.0 / s }
        };
        println!(
            "{name:<24} {a:>10.2} {:>10.1} {b:>10.2} {:>10.1} {:>7.0}%",
            rate(a),
            rate(b),
            a / b * 100.0
        );
        json.insert(
            name.to_owned(),
            serde_json::json!({ "one_secs": a, "three_secs": b }),
        );
    }
    let lat = |ms: &[Measured]| {
        (
            med(ms, |m| m.idle_p50),
            med(ms, |m| m.idle_p99),
            med(ms, |m| m.loaded_p50),
            med(ms, |m| m.loaded_p99),
        )
    };
    for (label, ms) in [("1 server", &one), ("3 servers", &three)] {
        let (ip50, ip99, lp50, lp99) = lat(ms);
        let rss = ms.iter().map(|m| m.rss_kib).max().unwrap_or(0);
        println!(
            "{label}: missing query of 1000 ids p50/p99 {ip50:.1}/{ip99:.1} ms idle, \
             {lp50:.1}/{lp99:.1} ms under the 8 pushes; peak server RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
        json.insert(
            format!("{label} latency and rss"),
            serde_json::json!({
                "idle_p50_ms": ip50, "idle_p99_ms": ip99,
                "loaded_p50_ms": lp50, "loaded_p99_ms": lp99,
                "peak_rss_mib": rss as f64 / 1024.0,
            }),
        );
    }
    let trials: usize = three.iter().map(|m| m.lag_trials).sum();
    let at_once: usize = three.iter().map(|m| m.lag_at_once).sum();
    let max_ms = three.iter().map(|m| m.lag_max_ms).fold(0.0, f64::max);
    println!(
        "present lag: {at_once} of {trials} chunks stored through one server were present on \
         another at the first ask; the longest from the store's answer to present: {max_ms:.1} ms"
    );
    json.insert(
        "present lag".into(),
        serde_json::json!({ "trials": trials, "at_once": at_once, "max_ms": max_ms }),
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-cluster.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).expect("write json");
    println!("written to {}", out.display());
}
