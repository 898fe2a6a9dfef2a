//! Remote-store benchmark: a store in a SeaweedFS bucket with its index in PostgreSQL beside a
//! directory store, on the same generated files, in one run.
//!
//! Run with `cargo bench --bench remote`. It starts both engines on loopback with
//! `.ci/engines.sh` (installing them from apt and PyPI if needed) unless `HOARD_TEST_BUCKET` and
//! `HOARD_TEST_INDEX` name running ones, generates the 1 GiB mixed file and its 200-edit copy
//! of `benches/e2e.rs` (`HOARD_BENCH_MIB`, `HOARD_BENCH_RUNS`, `HOARD_BENCH_DIR` as there), and
//! per run, each step a separate process under `/usr/bin/time`, on a fresh store each:
//!
//! - directory and bucket side by side: `import v1`, `import v2`, `export v2`; the bytes the
//!   packs take (`stats`: pack files against pack objects);
//! - `hoard serve` on the bucket store: `push v1`, `push v2`, `pull v2`;
//! - `hoard copy` of the directory store (both versions) to a new bucket prefix.
//!
//! Then the missing query of 1 000 000 ids (half stored) through a server on a bucket store,
//! at the chunks it holds and after 10 000 000 synthetic chunk rows are added to its index,
//! beside the same lookup in a directory store holding as many chunks. Medians; results go to
//! stdout and `target/bench-remote.json`. Engines the bench started are stopped by PID.
//!
//! The engines share this machine's cores with hoard, so each import and export step also
//! records the CPU seconds of hoard (GNU time) and of the engines (`/proc` of their PIDs,
//! PostgreSQL's reaped backends included): no step can take less wall time than all of it
//! spread over the cores, and the bench prints that bound beside the measured time.

#[path = "../tests/integration/data.rs"]
mod generate;
mod support;

use std::path::Path;
use std::process::Child;
use std::time::Instant;

use hoard::Hash;
use hoard::store::pack::ChunkLoc;
use hoard::store::{Catalog, ChunkStore, LocalStore};
use support::engines::{Cpu, Engines, engine_env, sql, timed_hoard, timed_hoard_cpu};
use support::{env_num, mbps, median, prime, warm};

/// Synthetic chunks added to the indexes for the second missing query (`HOARD_BENCH_MANY`;
/// 0 leaves that query out).
const MANY: usize = 10_000_000;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `hoard serve` on a store given by `store_args`, on 127.0.0.1 port 0.
fn serve(hoard: &str, store_args: &[&str]) -> (Child, String) {
    let s = support::start_server_with(hoard, store_args, &engine_env());
    (s.child, s.url)
}

/// SIGTERM, wait; returns the server's peak RSS in KiB.
fn stop(child: Child) -> u64 {
    support::stop_server(support::Server {
        child,
        url: String::new(),
    })
}

#[derive(Default)]
struct Runs {
    local: [Vec<f64>; 3],
    remote: [Vec<f64>; 3],
    local_cpu: [Vec<Cpu>; 3],
    remote_cpu: [Vec<Cpu>; 3],
    push: [Vec<f64>; 3],
    copy: Vec<f64>,
    rss_cli: u64,
    rss_server: u64,
    local_bytes: u64,
    bucket_bytes: u64,
    copied_bytes: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let engines = Engines::up();
    let mib = env_num("HOARD_BENCH_MIB", 1024);
    let runs = env_num("HOARD_BENCH_RUNS", 3).max(1);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let (_guard, tmp, kept) = support::bench_dir("hoard-remote-");
    let tmp = tmp.as_path();
    let hoard_bin =
        std::env::var("HOARD_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hoard").to_owned());
    let hoard = hoard_bin.as_str();

    let (v1, v2) = support::inputs(tmp, kept, mib, |n| {
        let data = generate::mixed(n, 1);
        let edited = generate::edit(&data, 200, 2);
        (data, edited)
    });
    let n = mib << 20;
    let (s1, s2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let out = tmp.join("out.bin");
    let out_s = out.to_str().unwrap();

    let mut r = Runs::default();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let local = tmp.join(format!("local-{run}"));
        // A kept bench directory holds the last run's store: start from none.
        let _ = std::fs::remove_dir_all(&local);
        let l = local.to_str().unwrap();
        let (bucket, index) = engines.store(&format!("r{run}"));
        type Side<'a> = (&'a mut [Vec<f64>; 3], &'a mut [Vec<Cpu>; 3], Vec<&'a str>);
        let sides: [Side; 2] = [
            (&mut r.local, &mut r.local_cpu, vec!["--store", l]),
            (
                &mut r.remote,
                &mut r.remote_cpu,
                vec!["--store", &bucket, "--index", &index],
            ),
        ];
        for (times, cpus, store) in sides {
            for (i, (input, verb)) in [
                (Some(&v1), "import"),
                (Some(&v2), "import"),
                (None, "export"),
            ]
            .into_iter()
            .enumerate()
            {
                prime(tmp);
                let mut args = store.clone();
                match input {
                    Some(f) => {
                        warm(f);
                        args.extend([verb, f.to_str().unwrap(), "--name", "v"]);
                    }
                    None => args.extend([verb, "v", out_s]),
                }
                let (step, cpu, _) = timed_hoard_cpu(hoard, &args, tmp);
                times[i].push(step.secs);
                cpus[i].push(cpu);
                if store.len() > 2 {
                    r.rss_cli = r.rss_cli.max(step.rss_kib);
                }
                let _ = std::fs::remove_file(&out);
            }
            let mut args = store.clone();
            args.extend(["stats", "--json"]);
            let stored = json(&timed_hoard(hoard, &args, tmp).1)["stored_bytes"]
                .as_u64()
                .unwrap_or(0);
            if store.len() > 2 {
                r.bucket_bytes = stored;
            } else {
                r.local_bytes = stored;
            }
        }

        // push and pull through a server on a fresh bucket store.
        let (bucket2, index2) = engines.store(&format!("p{run}"));
        let (child, url) = serve(hoard, &["--store", &bucket2, "--index", &index2]);
        for (i, args) in [
            vec!["push", s1, "--server", &url, "--name", "v"],
            vec!["push", s2, "--server", &url, "--name", "v"],
            vec!["pull", "v", out_s, "--server", &url],
        ]
        .into_iter()
        .enumerate()
        {
            prime(tmp);
            if i < 2 {
                warm(Path::new(args[1]));
            }
            let (step, _) = timed_hoard(hoard, &args, tmp);
            r.push[i].push(step.secs);
            r.rss_cli = r.rss_cli.max(step.rss_kib);
        }
        let _ = std::fs::remove_file(&out);
        r.rss_server = r.rss_server.max(stop(child));

        // The directory store, both versions, copied to a new bucket prefix.
        let (bucket3, index3) = engines.store(&format!("c{run}"));
        prime(tmp);
        let (step, report) = timed_hoard(
            hoard,
            &[
                "copy",
                "--from",
                l,
                "--to",
                &bucket3,
                "--to-index",
                &index3,
                "--json",
            ],
            tmp,
        );
        r.copy.push(step.secs);
        r.rss_cli = r.rss_cli.max(step.rss_kib);
        r.copied_bytes = json(&report)["bytes"].as_u64().unwrap_or(0);
        if run + 1 < runs {
            let _ = std::fs::remove_dir_all(&local);
        }
    }

    // The missing query: through a server on the last bucket store, at its own chunks and
    // then with MANY synthetic chunk rows added; the same ids in a directory store.
    let local = tmp.join(format!("local-{}", runs - 1));
    let (bucket, index) = engines.store("m");
    let _ = timed_hoard(
        hoard,
        &["--store", &bucket, "--index", &index, "import", s1],
        tmp,
    );
    let small = missing_query(hoard, &bucket, &index, 1);
    let many = env_num("HOARD_BENCH_MANY", MANY) as u64;
    let (large, local_small, local_large) = if many == 0 {
        (f64::NAN, local_lookups(&local, 0).0, f64::NAN)
    } else {
        eprintln!("adding {many} synthetic chunk rows to the index");
        let t = Instant::now();
        sql(
            &index,
            &format!(
                "SET synchronous_commit = off; \
             ALTER TABLE chunks DROP CONSTRAINT chunks_pkey; \
             INSERT INTO chunks (id, pack, pack_offset, stored_len, raw_len, codec) \
             SELECT sha256(int8send(i)), 1, i, 100, 100, 0 FROM generate_series(1, {many}) i; \
             ALTER TABLE chunks ADD PRIMARY KEY (id); ANALYZE chunks"
            ),
        );
        eprintln!("  {:.0} s", t.elapsed().as_secs_f64());
        let large = missing_query(hoard, &bucket, &index, many);
        let (local_small, local_large) = local_lookups(&local, many);
        (large, local_small, local_large)
    };

    let m = |v: &Vec<f64>| median(v.clone());
    let li: Vec<f64> = r.local.iter().map(m).collect();
    let ri: Vec<f64> = r.remote.iter().map(m).collect();
    let pu: Vec<f64> = r.push.iter().map(m).collect();
    let cp = m(&r.copy);
    println!(
        "\n## {mib} MiB mixed file, directory store beside SeaweedFS + PostgreSQL on loopback, {runs} runs, medians\n"
    );
    println!("| step | directory | bucket + PostgreSQL | bucket / directory |");
    println!("|---|---|---|---|");
    for (i, what) in ["import v1", "import v2 (200 edits)", "export v2"]
        .iter()
        .enumerate()
    {
        println!(
            "| {what} | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | {:.0}% of the speed |",
            li[i],
            mbps(n, li[i]),
            ri[i],
            mbps(n, ri[i]),
            li[i] / ri[i] * 100.0
        );
    }
    let mc = |v: &Vec<Cpu>| Cpu {
        hoard: median(v.iter().map(|c| c.hoard).collect()),
        engines: median(v.iter().map(|c| c.engines).collect()),
    };
    let lc: Vec<Cpu> = r.local_cpu.iter().map(mc).collect();
    let rc: Vec<Cpu> = r.remote_cpu.iter().map(mc).collect();
    // Both engines share the machine's cores with hoard: a step cannot take less wall time
    // than all the CPU seconds spent on it spread over every core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound: Vec<f64> = rc.iter().map(|c| (c.hoard + c.engines) / cores).collect();
    println!(
        "| pack bytes after v1 + v2 | {} | {} | {:+.2}% |",
        r.local_bytes,
        r.bucket_bytes,
        (r.bucket_bytes as f64 / r.local_bytes as f64 - 1.0) * 100.0
    );
    println!(
        "| push v1 / push v2 / pull v2 (server on the bucket) | | {:.2} s / {:.2} s / {:.2} s | |",
        pu[0], pu[1], pu[2]
    );
    println!(
        "| copy directory -> bucket (v1 + v2) | | {:.2} s ({:.0} MB/s of stored bytes, {} bytes) | |",
        cp,
        mbps(r.copied_bytes as usize, cp),
        r.copied_bytes
    );
    println!(
        "| missing query, 1 M ids, at the chunks of one file | {:.2} M ids/s | {:.2} M ids/s | |",
        1.0 / local_small,
        1.0 / small
    );
    println!(
        "| missing query, 1 M ids, at + {} M chunks | {:.2} M ids/s | {:.2} M ids/s | |",
        many / 1_000_000,
        1.0 / local_large,
        1.0 / large
    );
    println!(
        "\n### Where the CPU goes (seconds, medians; the engines run on the same {cores} cores)\n"
    );
    println!(
        "| step | directory: hoard | bucket: hoard | bucket: SeaweedFS + PostgreSQL | bucket wall | bound: all CPU / cores | best bucket / directory the cores allow |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, what) in ["import v1", "import v2 (200 edits)", "export v2"]
        .iter()
        .enumerate()
    {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% |",
            lc[i].hoard,
            rc[i].hoard,
            rc[i].engines,
            ri[i],
            bound[i],
            li[i] / bound[i].max(li[i]) * 100.0
        );
    }
    println!();
    println!(
        "remote import v1: {:.0}% of local (target >= 60%)",
        li[0] / ri[0] * 100.0
    );
    println!(
        "remote import v2: {:.0}% of local (target >= 50%)",
        li[1] / ri[1] * 100.0
    );
    println!(
        "remote export: {:.0}% of local (target >= 50%)",
        li[2] / ri[2] * 100.0
    );
    println!(
        "missing query at {} M chunks: {:.2} M ids/s (target >= 1)",
        many / 1_000_000,
        1.0 / large
    );
    println!(
        "peak RSS: server {:.1} MiB, CLI {:.1} MiB (target < 128 MiB)",
        r.rss_server as f64 / 1024.0,
        r.rss_cli as f64 / 1024.0
    );
    println!(
        "bucket bytes vs directory: {:+.2}% (target within 2%)",
        (r.bucket_bytes as f64 / r.local_bytes as f64 - 1.0) * 100.0
    );
    let json = serde_json::json!({
        "mib": mib, "runs": runs,
        "local_s": li, "remote_s": ri,
        "local_hoard_cpu_s": lc.iter().map(|c| c.hoard).collect::<Vec<_>>(),
        "remote_hoard_cpu_s": rc.iter().map(|c| c.hoard).collect::<Vec<_>>(),
        "remote_engines_cpu_s": rc.iter().map(|c| c.engines).collect::<Vec<_>>(),
        "remote_cpu_bound_s": bound, "push_push_pull_s": pu, "copy_s": cp,
        "copied_bytes": r.copied_bytes, "local_pack_bytes": r.local_bytes, "bucket_pack_bytes": r.bucket_bytes,
        "missing_small_s": small, "missing_large_s": large,
        "local_lookup_small_s": local_small, "local_lookup_large_s": local_large,
        "rss_server_kib": r.rss_server, "rss_cli_kib": r.rss_cli,
    });
    std::fs::write(
        target.join("bench-remote.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write json");
}

/// A million ids, the first half stored in the store at `url` (from its manifest of `v`),
/// the rest made up.
fn query_ids(stored: &[Hash]) -> Vec<Hash> {
    let mut ids: Vec<Hash> = stored.iter().copied().cycle().take(500_000).collect();
    let mut i = 0u64;
    while ids.len() < 1_000_000 {
        ids.push(Hash::of(&i.to_le_bytes()));
        i += 1;
    }
    ids
}

/// Seconds for one binary missing query of a million ids through a server on the bucket
/// store (median of three).
fn missing_query(hoard: &str, bucket: &str, index: &str, at_least: u64) -> f64 {
    let (child, url) = serve(hoard, &["--store", bucket, "--index", index]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    // The server builds its id replica in the background: time the query once it is built.
    let t = Instant::now();
    loop {
        let text = rt.block_on(async {
            http.get(format!("{url}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        let ids: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("hoard_id_replica_ids "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if ids >= at_least {
            eprintln!(
                "  id replica: {ids} ids after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(t.elapsed().as_secs() < 600, "no id replica after 10 min");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let stored: Vec<Hash> = rt.block_on(async {
        let m: serde_json::Value = http
            .get(format!("{url}/v1/manifests/v1.bin"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        m["chunks"]
            .as_array()
            .expect("the manifest's chunks")
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect()
    });
    let body = bytes::Bytes::from(hoard::wire::pack_ids(&query_ids(&stored)));
    let secs = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(async {
                    let resp = http
                        .post(format!("{url}/v1/chunks/missing"))
                        .header("content-type", hoard::wire::BINARY)
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert!(resp.status().is_success());
                    resp.bytes().await.unwrap();
                });
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    stop(child);
    secs
}

/// Seconds for the same lookup in the directory store at `store`, at its own chunks and with
/// `many` synthetic locations added to its chunk table (median of three each).
fn local_lookups(store: &Path, many: u64) -> (f64, f64) {
    let s = LocalStore::open_existing(store).expect("open the directory store");
    let mut stored = Vec::new();
    for m in s.manifests().unwrap() {
        hoard::restore::for_each_page(&s, &m, |p| {
            stored.extend(p.chunks.iter().map(|c| c.id));
            Ok(())
        })
        .unwrap();
    }
    let ids = query_ids(&stored);
    let time = || {
        median(
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(s.missing(&ids).unwrap());
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let small = time();
    if many == 0 {
        return (small, f64::NAN);
    }
    eprintln!("adding {many} synthetic chunks to the directory store's chunk table");
    let loc = ChunkLoc {
        pack: 1,
        offset: 0,
        stored_len: 100,
        raw_len: 100,
        codec: 0,
        base: None,
    };
    let mut i = 0u64;
    while i < many {
        let batch: Vec<(Hash, ChunkLoc)> = (i..(i + 100_000).min(many))
            .map(|j| (Hash::of(&(j | 1 << 63).to_le_bytes()), loc))
            .collect();
        s.catalog().insert_locs(&batch).unwrap();
        i += batch.len() as u64;
    }
    (small, time())
}
