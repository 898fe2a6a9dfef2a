//! Network benchmark: push and pull over loopback beside local import and export, in one run.
//!
//! Run with `cargo bench --bench net`. It generates the same 1 GiB mixed file and 200-edit
//! copy as `benches/e2e.rs` (`HOARD_BENCH_MIB`, `HOARD_BENCH_RUNS`, `HOARD_BENCH_DIR` as
//! there), then per run, each as a separate process:
//!
//! - local: `hoard import v1`, `hoard import v2`, `hoard export v2` on a fresh store;
//! - network: `hoard serve` on a fresh store and 127.0.0.1 port 0, then `hoard push v1`,
//!   `hoard push v2` (its `--json` gives `bytes_sent`), `hoard pull v2` into a new file;
//!   clients under `/usr/bin/time` (wall, peak RSS), the server's peak RSS read from
//!   `/proc/PID/status` (VmHWM) before it is stopped with SIGTERM.
//!
//! Then one missing query of 1 000 000 ids (binary) against that server, and the same ids
//! looked up in the same store opened locally. Medians; ratios are within one run. Results go
//! to stdout and `target/bench-net.json`.

#[path = "../tests/integration/data.rs"]
mod generate;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hoard::Hash;
use hoard::store::{ChunkStore, LocalStore};
use support::{
    Step, env_num, mbps, median, prime, start_server, stop_server, timed, vm_hwm_kib, warm,
};

/// Runs `cmd` under GNU time, returning the step and its stdout.
fn timed_out(cmd: &[&str], tmp: &Path) -> (Step, String) {
    let out = tmp.join("time.txt");
    let o = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&out)
        .args(cmd)
        .output()
        .expect("run /usr/bin/time");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        support::read_time(&out),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[derive(Default)]
struct Runs {
    import1: Vec<f64>,
    import2: Vec<f64>,
    export: Vec<f64>,
    push1: Vec<f64>,
    push2: Vec<f64>,
    pull: Vec<f64>,
    sent2: Vec<f64>,
    tus1: Vec<f64>,
    tus2: Vec<f64>,
    rss_client: u64,
    rss_server: u64,
    rss_local: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib = env_num("HOARD_BENCH_MIB", 1024);
    let runs = env_num("HOARD_BENCH_RUNS", 3).max(1);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let (_guard, tmp, kept) = support::bench_dir("hoard-net-");
    let tmp = tmp.as_path();
    // `HOARD_BENCH_BIN` times another build (an earlier commit's) with the same bench.
    let hoard_bin =
        std::env::var("HOARD_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hoard").to_owned());
    let hoard = hoard_bin.as_str();

    let (v1, v2) = support::inputs(tmp, kept, mib, |n| {
        let data = generate::mixed(n, 1);
        let edited = generate::edit(&data, 200, 2);
        (data, edited)
    });
    let n = mib << 20;
    let (s1, s2, out) = (
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        tmp.join("out.bin"),
    );
    let out_s = out.to_str().unwrap();

    let mut r = Runs::default();
    let mut missing = (0.0, 0.0);
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let local = tmp.join(format!("local-{run}"));
        let l = local.to_str().unwrap();
        prime(tmp);
        warm(&v1);
        let a = timed(
            &[hoard, "--store", l, "import", s1, "--name", "v"],
            &[],
            tmp,
        );
        prime(tmp);
        warm(&v2);
        let b = timed(
            &[hoard, "--store", l, "import", s2, "--name", "v"],
            &[],
            tmp,
        );
        prime(tmp);
        let c = timed(&[hoard, "--store", l, "export", "v", out_s], &[], tmp);
        let _ = std::fs::remove_file(&out);
        r.import1.push(a.secs);
        r.import2.push(b.secs);
        r.export.push(c.secs);
        r.rss_local = r.rss_local.max(a.rss_kib).max(b.rss_kib).max(c.rss_kib);
        let _ = std::fs::remove_dir_all(&local);

        let remote = tmp.join(format!("remote-{run}"));
        let server = start_server(hoard, &remote);
        let url = server.url.clone();
        prime(tmp);
        warm(&v1);
        let (p1, _) = timed_out(
            &[hoard, "push", s1, "--server", &url, "--name", "v", "--json"],
            tmp,
        );
        prime(tmp);
        warm(&v2);
        let (p2, json2) = timed_out(
            &[hoard, "push", s2, "--server", &url, "--name", "v", "--json"],
            tmp,
        );
        let sent: serde_json::Value = serde_json::from_str(json2.trim()).expect("push --json");
        prime(tmp);
        let after_push = vm_hwm_kib(server.child.id());
        let (p3, _) = timed_out(&[hoard, "pull", "v", out_s, "--server", &url], tmp);
        let after_pull = vm_hwm_kib(server.child.id());
        let _ = std::fs::remove_file(&out);
        r.push1.push(p1.secs);
        r.push2.push(p2.secs);
        r.pull.push(p3.secs);
        r.sent2
            .push(sent["bytes_sent"].as_f64().unwrap_or(f64::NAN));
        r.rss_client = r.rss_client.max(p1.rss_kib).max(p2.rss_kib).max(p3.rss_kib);

        if run == 0 {
            missing = missing_query(&url, &remote);
            let (remote_s, _) = missing;
            let _ = remote_s;
        }
        let peak = stop_server(server);
        eprintln!(
            "server peak RSS: {} MiB after the pushes, {} after the pull, {} at the end",
            after_push / 1024,
            after_pull / 1024,
            peak / 1024
        );
        r.rss_server = r.rss_server.max(peak);

        // tus (what Uppy or tuspy send): every byte crosses, the server keeps only new
        // chunks. curl streams each file in one creation-with-upload request.
        let tus_store = tmp.join(format!("tus-{run}"));
        let server = start_server(hoard, &tus_store);
        for (file, times) in [(s1, &mut r.tus1), (s2, &mut r.tus2)] {
            prime(tmp);
            warm(Path::new(file));
            let len = std::fs::metadata(file).expect("input").len();
            let (t, _) = timed_out(
                &[
                    "curl",
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-X",
                    "POST",
                    "-T",
                    file,
                    "-H",
                    "Tus-Resumable: 1.0.0",
                    "-H",
                    &format!("Upload-Length: {len}"),
                    "-H",
                    "Upload-Metadata: filename dg==",
                    "-H",
                    "Content-Type: application/offset+octet-stream",
                    &format!("{}/v1/tus", server.url), // (no slash: curl -T would append the file name)
                ],
                tmp,
            );
            times.push(t.secs);
        }
        r.rss_server = r.rss_server.max(stop_server(server));
        let _ = std::fs::remove_dir_all(&tus_store);
        if run == 0 {
            let local_s = local_lookup(&remote);
            missing.1 = local_s;
        }
        let _ = std::fs::remove_dir_all(&remote);
    }

    let m = |v: &Vec<f64>| median(v.clone());
    let (i1, i2, ex, p1, p2, pl) = (
        m(&r.import1),
        m(&r.import2),
        m(&r.export),
        m(&r.push1),
        m(&r.push2),
        m(&r.pull),
    );
    let sent2 = m(&r.sent2);
    let (t1, t2) = (m(&r.tus1), m(&r.tus2));
    println!("\n## {mib} MiB mixed file over loopback, {runs} runs, medians\n");
    println!("| step | local | over HTTP | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| v1 in (import / push) | {:.0} MB/s | {:.0} MB/s | {:.0}% |",
        mbps(n, i1),
        mbps(n, p1),
        i1 / p1 * 100.0
    );
    println!(
        "| v2 in (import / push) | {:.2} s | {:.2} s | {:.2}x the time |",
        i2,
        p2,
        p2 / i2
    );
    println!(
        "| v2 out (export / pull) | {:.0} MB/s | {:.0} MB/s | {:.0}% |",
        mbps(n, ex),
        mbps(n, pl),
        ex / pl * 100.0
    );
    println!(
        "| v1 in (import / tus, every byte sent) | {:.0} MB/s | {:.0} MB/s | {:.0}% |",
        mbps(n, i1),
        mbps(n, t1),
        i1 / t1 * 100.0
    );
    println!(
        "| v2 in (import / tus, every byte sent) | {:.2} s | {:.2} s | {:.2}x the time |",
        i2,
        t2,
        t2 / i2
    );
    println!(
        "| 1 000 000 ids (index lookup / missing query) | {:.2} M ids/s | {:.2} M ids/s | {:.0}% |",
        1.0 / missing.1,
        1.0 / missing.0,
        missing.1 / missing.0 * 100.0
    );
    println!();
    println!("push v1 vs import: {:.0}% (target >= 70%)", i1 / p1 * 100.0);
    println!(
        "push v2 bytes sent: {:.0} = {:.2}% of the file (target <= 2%)",
        sent2,
        sent2 * 100.0 / n as f64
    );
    println!(
        "push v2 vs import v2: {:.2}x the time (target <= 1.5x)",
        p2 / i2
    );
    println!("pull vs export: {:.0}% (target >= 50%)", ex / pl * 100.0);
    println!(
        "missing query vs local lookup: {:.0}% (target >= 50%)",
        missing.1 / missing.0 * 100.0
    );
    println!(
        "peak RSS: server {:.1} MiB, client {:.1} MiB (target < 128 MiB each); local CLI {:.1} MiB",
        r.rss_server as f64 / 1024.0,
        r.rss_client as f64 / 1024.0,
        r.rss_local as f64 / 1024.0
    );
    let json = serde_json::json!({
        "mib": mib, "runs": runs,
        "import1_s": i1, "import2_s": i2, "export_s": ex, "push1_s": p1, "push2_s": p2, "pull_s": pl,
        "push2_bytes_sent": sent2, "tus1_s": t1, "tus2_s": t2, "missing_query_s": missing.0, "local_lookup_s": missing.1,
        "rss_server_kib": r.rss_server, "rss_client_kib": r.rss_client, "rss_local_kib": r.rss_local,
    });
    std::fs::write(
        target.join("bench-net.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write json");
}

/// A million ids: every chunk id the store holds, the rest made up.
fn million_ids(store_ids: &[Hash]) -> Vec<Hash> {
    let mut ids: Vec<Hash> = store_ids.iter().copied().take(1_000_000).collect();
    let mut i = 0u64;
    while ids.len() < 1_000_000 {
        ids.push(Hash::of(&i.to_le_bytes()));
        i += 1;
    }
    ids
}

fn stored_ids(url: &str) -> Vec<Hash> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let m: serde_json::Value = reqwest::get(format!("{url}/v1/manifests/v"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        m["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect()
    })
}

/// Seconds for one binary missing query of 1 000 000 ids (median of three).
fn missing_query(url: &str, _store: &Path) -> (f64, f64) {
    let ids = million_ids(&stored_ids(url));
    let body = bytes::Bytes::from(hoard::wire::pack_ids(&ids));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            rt.block_on(async {
                let r = http
                    .post(format!("{url}/v1/chunks/missing"))
                    .header("content-type", hoard::wire::BINARY)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            });
            t.elapsed().as_secs_f64()
        })
        .collect();
    (median(times), 0.0)
}

/// Seconds for the same lookup in the store opened locally (median of three).
fn local_lookup(store: &Path) -> f64 {
    let s = LocalStore::open_existing(store).expect("open store");
    let mut ids = Vec::new();
    for m in s.manifests().unwrap() {
        hoard::restore::for_each_page(&s, &m, |p| {
            ids.extend(p.chunks.iter().map(|c| c.id));
            Ok(())
        })
        .unwrap();
    }
    let ids = million_ids(&ids);
    median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(s.missing(&ids).unwrap());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}
