//! Limits benchmark: what hostile or merely huge requests cost a running server, in one run.
//!
//! Run with `cargo bench --bench limits`. Each part starts `hoard serve` on a fresh store on
//! 127.0.0.1 port 0 and reads the server's peak RSS (VmHWM) from `/proc` before stopping it:
//!
//! - `missing_json`: 24 concurrent `POST /v1/chunks/missing` with 1 000 000-id JSON bodies
//!   (about 68 MB each): how many were answered, how many got 503, the server's peak RSS.
//! - `manifests`: 4 concurrent `POST /v1/uploads` with binary manifests of 1 860 000 refs
//!   (about 67 MB each): wall time, peak RSS; then `GET /v1/uploads/{sid}` on one of them,
//!   twice (the second may reuse the first's answer: see the README).
//! - `tus_tiny`: a tus upload, 300 KB in one `PATCH`, then 1 500 one-byte `PATCH`es: how much
//!   the index and tail files grew, and the time per `PATCH`.
//!
//! `HOARD_BENCH_DIR` as in `benches/e2e.rs`. Results go to stdout and
//! `target/bench-limits.json`. Every loop is bounded; every server is stopped by its PID.

#[path = "../tests/integration/data.rs"]
mod generate;
mod support;

use std::path::Path;
use std::time::Instant;

use hoard::manifest::ChunkRef;
use hoard::{ChunkerParams, Hash};
use support::{Server, start_server, stop_server, vm_hwm_kib};

/// Peak RSS so far of a process, in MiB.
fn peak_mib(pid: u32) -> f64 {
    vm_hwm_kib(pid) as f64 / 1024.0
}

/// SIGTERM, then wait; returns the peak RSS it reached, in MiB.
fn stop(s: Server) -> f64 {
    stop_server(s) as f64 / 1024.0
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `n` distinct ids no store holds.
fn random_ids(n: usize, seed: u64) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| Hash::of(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect()
}

fn missing_json(tmp: &Path, rt: &tokio::runtime::Runtime) -> serde_json::Value {
    let server = start_server(env!("CARGO_BIN_EXE_hoard"), &tmp.join("s-missing"));
    let ids: Vec<String> = random_ids(1_000_000, 1).iter().map(Hash::to_hex).collect();
    let body = bytes::Bytes::from(serde_json::to_vec(&ids).unwrap());
    eprintln!("missing_json: 24 x {} MB", body.len() / 1_000_000);
    let http = reqwest::Client::new();
    let t = Instant::now();
    let statuses: Vec<u16> = rt.block_on(async {
        let calls = (0..24).map(|_| {
            let (http, body, url) = (http.clone(), body.clone(), server.url.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/v1/chunks/missing"))
                    .header("content-type", "application/json")
                    .timeout(std::time::Duration::from_secs(300))
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                }
            })
        });
        let mut out = Vec::new();
        for c in calls.collect::<Vec<_>>() {
            out.push(c.await.unwrap_or(0));
        }
        out
    });
    let secs = t.elapsed().as_secs_f64();
    let peak = stop(server);
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    serde_json::json!({
        "requests": 24, "body_bytes": body.len(), "ok": count(200), "busy_503": count(503),
        "other": 24 - count(200) - count(503), "seconds": secs, "server_peak_mib": peak,
    })
}

fn manifests(tmp: &Path, rt: &tokio::runtime::Runtime) -> serde_json::Value {
    let server = start_server(env!("CARGO_BIN_EXE_hoard"), &tmp.join("s-manifests"));
    let n = 1_860_000usize;
    let params = ChunkerParams::DEFAULT;
    let bodies: Vec<bytes::Bytes> = (0..4u64)
        .map(|k| {
            let refs: Vec<ChunkRef> = random_ids(n, 10 + k)
                .into_iter()
                .map(|id| ChunkRef { id, len: 65536 })
                .collect();
            let mut body = hoard::wire::manifest_head(params);
            body.extend(hoard::wire::manifest_refs(&refs));
            let size = n as u64 * 65536;
            body.extend(hoard::wire::manifest_tail(
                n as u64,
                size,
                &Hash::of(&k.to_le_bytes()),
            ));
            bytes::Bytes::from(body)
        })
        .collect();
    eprintln!("manifests: 4 x {} MB", bodies[0].len() / 1_000_000);
    let http = reqwest::Client::new();
    let t = Instant::now();
    let answers: Vec<(u16, Option<String>)> = rt.block_on(async {
        let calls: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(k, body)| {
                let (http, body, url) = (http.clone(), body.clone(), server.url.clone());
                tokio::spawn(async move {
                    let r = http
                        .post(format!("{url}/v1/uploads?name=big{k}.img"))
                        .header("content-type", hoard::wire::BINARY)
                        .timeout(std::time::Duration::from_secs(600))
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let sid = r
                                .headers()
                                .get("hoard-session")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let _ = r.bytes().await;
                            (s, sid)
                        }
                        Err(_) => (0, None),
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap_or((0, None)));
        }
        out
    });
    let open_secs = t.elapsed().as_secs_f64();
    let peak_open = peak_mib(server.child.id());
    let sid = answers.iter().find_map(|(_, s)| s.clone());
    let mut progress = Vec::new();
    if let Some(sid) = &sid {
        for _ in 0..2 {
            let t = Instant::now();
            let ok = rt.block_on(async {
                http.get(format!("{}/v1/uploads/{sid}", server.url))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
            assert!(ok, "progress query failed");
            progress.push(t.elapsed().as_secs_f64());
        }
    }
    let peak = stop(server);
    serde_json::json!({
        "manifests": 4, "refs_each": n, "body_bytes": bodies[0].len(),
        "statuses": answers.iter().map(|a| a.0).collect::<Vec<_>>(),
        "open_seconds": open_secs, "server_peak_mib_after_open": peak_open,
        "progress_seconds": progress, "server_peak_mib": peak,
    })
}

fn tus_tiny(tmp: &Path, rt: &tokio::runtime::Runtime) -> serde_json::Value {
    let store = tmp.join("s-tus");
    let server = start_server(env!("CARGO_BIN_EXE_hoard"), &store);
    let data = generate::mixed(600_000, 3);
    let (first, tiny) = (300_000usize, 1_500usize);
    let http = reqwest::Client::new();
    let (grown, per_patch) = rt.block_on(async {
        let r = http
            .post(format!("{}/v1/tus/", server.url))
            .header("tus-resumable", "1.0.0")
            .header("upload-length", data.len().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let patch = |at: usize, body: Vec<u8>| {
            http.patch(format!("{}{loc}", server.url))
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", at.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(body)
                .send()
        };
        assert_eq!(
            patch(0, data[..first].to_vec())
                .await
                .unwrap()
                .status()
                .as_u16(),
            204
        );
        let state = || dir_bytes(&store.join("index")) + dir_bytes(&store.join("tails"));
        let before = state();
        let t = Instant::now();
        for at in first..first + tiny {
            let r = patch(at, data[at..=at].to_vec()).await.unwrap();
            assert_eq!(r.status().as_u16(), 204);
        }
        let per = t.elapsed().as_secs_f64() / tiny as f64;
        (state().saturating_sub(before), per)
    });
    stop(server);
    serde_json::json!({
        "first_patch_bytes": first, "one_byte_patches": tiny,
        "index_and_tails_grew_bytes": grown, "seconds_per_patch": per_patch,
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (_guard, tmp, _) = support::bench_dir("hoard-limits-");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = serde_json::json!({
        "missing_json": missing_json(&tmp, &rt),
        "manifests": manifests(&tmp, &rt),
        "tus_tiny": tus_tiny(&tmp, &rt),
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-limits.json");
    std::fs::write(&out, text).expect("write report");
}
