//! End-to-end benchmark: hoard beside borg and casync on the same generated files, in one run.
//!
//! Run with `cargo bench --bench e2e` (or `benches/compare.sh`, which installs the peers from
//! Debian first). It generates a mixed file (a third random, a third text, a third records) of
//! `HOARD_BENCH_MIB` MiB (default 1024) and a copy with 200 small edits, measures the machine's
//! per-stage limits on that data (FastCDC, BLAKE3, zstd, plain copy), then times
//! `hoard import` v1, `hoard import` v2 and `hoard export` v2 as separate processes under
//! `/usr/bin/time` (wall time, peak RSS), and does the same with borg (`--encryption none`, its
//! default lz4) and casync (`make` / `extract`) when they are installed. Each step runs
//! `HOARD_BENCH_RUNS` times (default 3) after re-reading its input; medians are reported.
//! Last, it imports and exports 256 MiB and `HOARD_BENCH_SCALE_MIB` MiB (default 4096) of
//! random data through stdin and stdout, to show that peak RSS does not grow with the file.
//! Before every timed step the bench writes and deletes a 1.5 GiB scratch file (see [`prime`]).
//! Results go to stdout and to `target/bench-e2e.json`.

#[path = "../tests/integration/data.rs"]
mod generate;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hoard::chunker::Cutter;
use hoard::{ChunkerParams, Hash, codec};
use support::{Step, env_num, have, mbps, median, prime, read_time, timed, warm};

/// Runs `cmd` under GNU time with `len` bytes of random data on its stdin and its stdout
/// discarded; returns wall seconds and peak RSS.
fn timed_fed(cmd: &[&str], len: u64, tmp: &Path) -> Step {
    use rand::{RngCore, SeedableRng};
    use std::io::Write;
    let out = tmp.join("time.txt");
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&out)
        .args(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run /usr/bin/time");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut rng = rand::rngs::StdRng::seed_from_u64(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        stdin.write_all(&buf[..n]).expect("feed hoard");
        left -= n as u64;
    }
    drop(stdin);
    assert!(child.wait().expect("wait").success(), "{cmd:?} failed");
    read_time(&out)
}

/// Peak RSS of importing (from stdin) and exporting (to stdout) `mib` MiB of random data.
fn rss_at(hoard: &str, mib: u64, tmp: &Path) -> (u64, u64) {
    let store = tmp.join(format!("rss-{mib}"));
    let s = store.to_str().expect("utf-8 path");
    let import = timed_fed(
        &[hoard, "--store", s, "import", "-", "--name", "big"],
        mib << 20,
        tmp,
    );
    let export = timed(&[hoard, "--store", s, "export", "big", "-"], &[], tmp);
    let _ = std::fs::remove_dir_all(&store);
    (import.rss_kib, export.rss_kib)
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Times `f` over `runs` runs; median seconds.
fn time_stage(runs: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

struct ToolResult {
    tool: &'static str,
    import1: (f64, u64),
    stored1: u64,
    import2: (f64, u64),
    grown2: u64,
    export: (f64, u64),
}

fn run_steps(
    tool: &'static str,
    runs: usize,
    tmp: &Path,
    v1: &Path,
    v2: &Path,
    mut step: impl FnMut(&str, &Path, &Path, &Path) -> Step,
) -> ToolResult {
    let (mut i1, mut i2, mut ex) = (vec![], vec![], vec![]);
    let (mut r1, mut r2, mut r3) = (0, 0, 0);
    let (mut s1, mut g2) = (vec![], vec![]);
    for run in 0..runs {
        // Each run gets a fresh store (or repository) directory; its size is what `du` counts.
        let dir = tmp.join(format!("{tool}-{run}"));
        prime(tmp);
        warm(v1);
        let a = step("import1", &dir, v1, tmp);
        s1.push(du(&dir) as f64);
        prime(tmp);
        warm(v2);
        let b = step("import2", &dir, v2, tmp);
        g2.push(du(&dir) as f64 - s1[run]);
        prime(tmp);
        let c = step("export", &dir, v2, tmp);
        i1.push(a.secs);
        i2.push(b.secs);
        ex.push(c.secs);
        r1 = r1.max(a.rss_kib);
        r2 = r2.max(b.rss_kib);
        r3 = r3.max(c.rss_kib);
        let _ = std::fs::remove_file(tmp.join("out.bin"));
    }
    ToolResult {
        tool,
        import1: (median(i1), r1),
        stored1: median(s1) as u64,
        import2: (median(i2), r2),
        grown2: median(g2) as u64,
        export: (median(ex), r3),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` / criterion-style probing
    }
    let mib = env_num("HOARD_BENCH_MIB", 1024);
    let runs = env_num("HOARD_BENCH_RUNS", 3).max(1);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let (_guard, tmp, kept) = support::bench_dir("hoard-e2e-");
    let tmp = tmp.as_path();
    // `HOARD_BENCH_BIN` times another build (an earlier commit's) with the same bench.
    let hoard_bin =
        std::env::var("HOARD_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hoard").to_owned());
    let hoard = hoard_bin.as_str();

    eprintln!("generating {mib} MiB of mixed data and an edited copy");
    let data = generate::mixed(mib << 20, 1);
    let edited = generate::edit(&data, 200, 2);
    let (v1, v2) = (tmp.join("v1.bin"), tmp.join("v2.bin"));
    if !kept || std::fs::metadata(&v1).map(|m| m.len()).ok() != Some(data.len() as u64) {
        std::fs::write(&v1, &data).expect("write v1");
        std::fs::write(&v2, &edited).expect("write v2");
    }
    for run in 0..runs {
        for tool in ["hoard", "borg", "casync"] {
            let _ = std::fs::remove_dir_all(tmp.join(format!("{tool}-{run}")));
        }
    }

    // Per-stage limits, one core each, on the same bytes.
    let p = ChunkerParams::DEFAULT;
    let cutter = Cutter::new(p);
    let lens = cutter.lengths(&data);
    let level = hoard::config::DEFAULT_LEVEL;
    let stage_runs = runs;
    let t_cdc = time_stage(stage_runs, || {
        std::hint::black_box(cutter.lengths(&data));
    });
    let t_b3 = time_stage(stage_runs, || {
        let mut pos = 0;
        for &l in &lens {
            std::hint::black_box(Hash::of(&data[pos..pos + l]));
            pos += l;
        }
    });
    let t_zstd = time_stage(1, || {
        let mut pos = 0;
        for &l in &lens {
            std::hint::black_box(codec::compress(&data[pos..pos + l], level));
            pos += l;
        }
    });
    let copy_out = tmp.join("copy.bin");
    let t_copy = time_stage(stage_runs, || {
        prime(tmp);
        warm(&v1);
        // read + write through a 1 MiB buffer (fs::copy's copy_file_range is slower here)
        use std::io::{Read, Write};
        let mut src = std::fs::File::open(&v1).expect("open v1");
        let mut dst = std::fs::File::create(&copy_out).expect("create copy");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).expect("read v1");
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n]).expect("write copy");
        }
    });
    let _ = std::fs::remove_file(&copy_out);
    let n = data.len();
    drop(data);
    drop(edited);

    let mut results = Vec::new();
    results.push(run_steps(
        "hoard",
        runs,
        tmp,
        &v1,
        &v2,
        |what, store, input, tmp| {
            let s = store.to_str().expect("utf-8 path");
            match what {
                "export" => timed(
                    &[
                        hoard,
                        "--store",
                        s,
                        "export",
                        "v",
                        tmp.join("out.bin").to_str().unwrap(),
                    ],
                    &[],
                    tmp,
                ),
                _ => timed(
                    &[
                        hoard,
                        "--store",
                        s,
                        "import",
                        input.to_str().unwrap(),
                        "--name",
                        "v",
                    ],
                    &[],
                    tmp,
                ),
            }
        },
    ));
    let skip = std::env::var("HOARD_BENCH_ONLY").is_ok_and(|v| v == "hoard");
    if have("borg") && !skip {
        let base = tmp.join("borg-base");
        let base_s = base.to_str().unwrap().to_owned();
        let envs = [
            ("BORG_BASE_DIR", base_s.as_str()),
            ("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"),
            ("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes"),
        ];
        results.push(run_steps(
            "borg",
            runs,
            tmp,
            &v1,
            &v2,
            |what, repo, input, tmp| {
                let r = repo.to_str().unwrap();
                match what {
                    "import1" => {
                        let st = Command::new("borg")
                            .args(["init", "--encryption", "none", r])
                            .envs(envs)
                            .status();
                        assert!(st.is_ok_and(|s| s.success()), "borg init failed");
                        timed(
                            &[
                                "borg",
                                "create",
                                &format!("{r}::v1"),
                                input.to_str().unwrap(),
                            ],
                            &envs,
                            tmp,
                        )
                    }
                    "import2" => timed(
                        &[
                            "borg",
                            "create",
                            &format!("{r}::v2"),
                            input.to_str().unwrap(),
                        ],
                        &envs,
                        tmp,
                    ),
                    _ => {
                        let out = tmp.join("borg-out");
                        let _ = std::fs::remove_dir_all(&out);
                        std::fs::create_dir_all(&out).unwrap();
                        let cmd = format!("cd {} && borg extract {r}::v2", out.display());
                        let step = timed(&["sh", "-c", &cmd], &envs, tmp);
                        let _ = std::fs::remove_dir_all(&out);
                        step
                    }
                }
            },
        ));
    } else {
        eprintln!("borg not installed: skipping it (apt-get install borgbackup)");
    }
    if have("casync") && !skip {
        results.push(run_steps(
            "casync",
            runs,
            tmp,
            &v1,
            &v2,
            |what, dir, input, tmp| {
                std::fs::create_dir_all(dir).unwrap();
                let store = format!("--store={}", dir.join("store").display());
                let idx = |v: &str| dir.join(format!("{v}.caibx")).to_str().unwrap().to_owned();
                match what {
                    "import1" => timed(
                        &[
                            "casync",
                            "make",
                            &store,
                            &idx("v1"),
                            input.to_str().unwrap(),
                        ],
                        &[],
                        tmp,
                    ),
                    "import2" => timed(
                        &[
                            "casync",
                            "make",
                            &store,
                            &idx("v2"),
                            input.to_str().unwrap(),
                        ],
                        &[],
                        tmp,
                    ),
                    _ => timed(
                        &[
                            "casync",
                            "extract",
                            &store,
                            &idx("v2"),
                            tmp.join("out.bin").to_str().unwrap(),
                        ],
                        &[],
                        tmp,
                    ),
                }
            },
        ));
    } else {
        eprintln!("casync not installed: skipping it (apt-get install casync)");
    }

    println!("\n## {mib} MiB mixed file, {runs} runs, medians\n");
    println!("per-stage limits on this data (one core each):");
    println!(
        "  FastCDC {:>7.0} MB/s   BLAKE3 {:>7.0} MB/s   zstd -{level} {:>6.0} MB/s   plain copy {:>6.0} MB/s",
        mbps(n, t_cdc),
        mbps(n, t_b3),
        mbps(n, t_zstd),
        mbps(n, t_copy)
    );
    println!();
    println!(
        "| tool | import v1 MB/s | store after v1 | import v2 MB/s | store growth v2 | export MB/s | peak RSS import / export |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.1} MiB ({:.1}%) | {:.0} | {:.2} MiB ({:.2}%) | {:.0} | {:.1} / {:.1} MiB |",
            r.tool,
            mbps(n, r.import1.0),
            r.stored1 as f64 / 1048576.0,
            r.stored1 as f64 * 100.0 / n as f64,
            mbps(n, r.import2.0),
            r.grown2 as f64 / 1048576.0,
            r.grown2 as f64 * 100.0 / n as f64,
            mbps(n, r.export.0),
            r.import1.1.max(r.import2.1) as f64 / 1024.0,
            r.export.1 as f64 / 1024.0,
        );
    }
    let find = |t: &str| results.iter().find(|r| r.tool == t);
    let h = find("hoard").expect("hoard ran");
    println!();
    if let Some(b) = find("borg") {
        println!(
            "import v1 vs borg: {:.2}x (target >= 2.5x)",
            b.import1.0 / h.import1.0
        );
        println!(
            "import v2 vs borg: {:.2}x (target >= 5x)",
            b.import2.0 / h.import2.0
        );
    }
    if let Some(c) = find("casync") {
        println!(
            "stored v1 vs casync: {:+.1}% (target <= +5%)",
            (h.stored1 as f64 / c.stored1 as f64 - 1.0) * 100.0
        );
        println!(
            "growth v2 vs casync: {:.2}x (target <= 1.0x)",
            h.grown2 as f64 / c.grown2 as f64
        );
        println!(
            "export vs casync: {:.2}x (target >= 4x)",
            c.export.0 / h.export.0
        );
    }
    println!(
        "hoard peak RSS: import {:.1} MiB, export {:.1} MiB (target < 64 MiB)",
        h.import1.1.max(h.import2.1) as f64 / 1024.0,
        h.export.1 as f64 / 1024.0
    );

    // Memory must not grow with the file: the same import and export at two sizes.
    let big = env_num("HOARD_BENCH_SCALE_MIB", 4096) as u64;
    let (small_i, small_e) = rss_at(hoard, 256, tmp);
    let (big_i, big_e) = rss_at(hoard, big, tmp);
    println!(
        "hoard peak RSS by file size (random data, stdin/stdout): 256 MiB import {:.1} / export {:.1} MiB; {big} MiB import {:.1} / export {:.1} MiB",
        small_i as f64 / 1024.0,
        small_e as f64 / 1024.0,
        big_i as f64 / 1024.0,
        big_e as f64 / 1024.0
    );

    let json = serde_json::json!({
        "rss_kib_by_size": { "256": [small_i, small_e], big.to_string(): [big_i, big_e] },
        "mib": mib, "runs": runs,
        "stages_mbps": { "fastcdc": mbps(n, t_cdc), "blake3": mbps(n, t_b3), "zstd": mbps(n, t_zstd), "copy": mbps(n, t_copy) },
        "tools": results.iter().map(|r| serde_json::json!({
            "tool": r.tool,
            "import1_mbps": mbps(n, r.import1.0), "import1_rss_kib": r.import1.1, "stored1_bytes": r.stored1,
            "import2_mbps": mbps(n, r.import2.0), "import2_rss_kib": r.import2.1, "grown2_bytes": r.grown2,
            "export_mbps": mbps(n, r.export.0), "export_rss_kib": r.export.1,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        target.join("bench-e2e.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write json");
}
