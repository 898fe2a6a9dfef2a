//! Delta chunks on pairs of similar files: how much the second version grows the store with
//! delta chunks on, off, and in casync; import and export speeds with delta on and off; peak
//! RSS; index bytes per chunk. In one run, on this machine.
//!
//! Pairs (built here, each from its own source, none tuned to one file):
//! - `ext4-rebuilt`: an ext4 image made with `mke2fs -d` from a generated tree of text and
//!   binary files, and one made the same way after ~2% of the files changed;
//! - `ext4-in-place`: the first image with the same changes written into it by `debugfs`;
//! - `tar`: two consecutive releases of one project's sdist from PyPI, unpacked to `.tar`
//!   (`HOARD_BENCH_SDIST`, default `Django 5.0.1 5.0.2`; skipped without network to the
//!   registry);
//! - `mixed`: the generated mixed file (`HOARD_BENCH_MIB`, default 256) and its 200-edit copy;
//! - `sqlite-dump`: `sqlite3 .dump` of a generated table before and after updating 1% of rows.
//!
//! `HOARD_BENCH_RUNS` (default 3) runs per step, medians; `HOARD_BENCH_DIR` keeps the inputs.

#[path = "../tests/integration/data.rs"]
mod data;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Step, env_num, have, median, prime, timed, warm};

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// A tree of `n` files: a third text, a third CSV-like records, a third binary.
fn tree(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let sub = dir.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&sub).unwrap();
        let len = 4096 + (i * 7919) % 60_000;
        let bytes = match i % 3 {
            0 => data::mixed(len, seed + i as u64),
            1 => (0..len / 24)
                .flat_map(|r| format!("{r:08},{:010},row{i}\n", r * 31 + i).into_bytes())
                .collect(),
            _ => data::random(len, seed + i as u64),
        };
        std::fs::write(sub.join(format!("f{i:05}")), bytes).unwrap();
    }
}

/// Changes ~2% of the tree's files (every 50th): a few bytes overwritten, a line added.
fn change_tree(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut changed = Vec::new();
    for i in (7..n).step_by(50) {
        let p = dir.join(format!("d{:02}", i % 40)).join(format!("f{i:05}"));
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() / 3;
        b[at..at + 8].copy_from_slice(b"CHANGED!");
        b.extend_from_slice(format!("appended line {i}\n").as_bytes());
        std::fs::write(&p, b).unwrap();
        changed.push(p);
    }
    changed
}

fn ext4_pairs(tmp: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    if !have("mke2fs") || !have("debugfs") {
        eprintln!("mke2fs/debugfs missing: skipping the ext4 pairs (apt-get install e2fsprogs)");
        return Vec::new();
    }
    let n = 6000;
    let src = tmp.join("tree");
    let (v1, v2, v3) = (
        tmp.join("ext4-v1.img"),
        tmp.join("ext4-v2.img"),
        tmp.join("ext4-v3.img"),
    );
    if !v1.exists() || !v2.exists() || !v3.exists() {
        let _ = std::fs::remove_dir_all(&src);
        tree(&src, n, 1);
        let mk = |img: &Path| {
            let _ = std::fs::remove_file(img);
            assert!(sh(&format!(
                "mke2fs -q -F -t ext4 -E root_owner=0:0 -U 3a3f3c1e-0000-4000-8000-000000000001 \
                 -E hash_seed=3a3f3c1e-0000-4000-8000-000000000002 -d {} {} 400M",
                src.display(),
                img.display()
            )));
        };
        mk(&v1);
        std::fs::copy(&v1, &v3).unwrap();
        let changed = change_tree(&src, n);
        mk(&v2);
        // The same changes written into a copy of the first image, in place.
        let mut script = String::new();
        for p in &changed {
            let rel = p.strip_prefix(&src).unwrap();
            script += &format!(
                "rm /{}\nwrite {} /{}\n",
                rel.display(),
                p.display(),
                rel.display()
            );
        }
        let cmds = tmp.join("debugfs.cmds");
        std::fs::write(&cmds, script).unwrap();
        assert!(sh(&format!(
            "debugfs -w -f {} {} >/dev/null 2>&1",
            cmds.display(),
            v3.display()
        )));
    }
    vec![
        ("ext4-rebuilt".into(), v1.clone(), v2),
        ("ext4-in-place".into(), v1, v3),
    ]
}

fn tar_pair(tmp: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let spec = std::env::var("HOARD_BENCH_SDIST").unwrap_or_else(|_| "Django 5.0.1 5.0.2".into());
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [project, a, b] = parts[..] else {
        panic!("HOARD_BENCH_SDIST is PROJECT V1 V2")
    };
    let (v1, v2) = (
        tmp.join(format!("tar-{project}-{a}.tar")),
        tmp.join(format!("tar-{project}-{b}.tar")),
    );
    for (v, out) in [(a, &v1), (b, &v2)] {
        if out.exists() {
            continue;
        }
        // The release's sdist from PyPI (a package registry), unpacked to .tar.
        let dl = tmp.join(format!("sdist-{project}-{v}"));
        let ok = sh(&format!(
            "python3 -m pip download -q --no-deps --no-binary :all: {project}=={v} -d {} \
             && gunzip -c {}/*.tar.gz > {}",
            dl.display(),
            dl.display(),
            out.display()
        ));
        if !ok {
            let _ = std::fs::remove_file(out);
            eprintln!("cannot fetch {project} {v} from PyPI: skipping the tar pair");
            return Vec::new();
        }
    }
    vec![(format!("tar ({project} {a}->{b})"), v1, v2)]
}

fn mixed_pair(tmp: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let mib = env_num("HOARD_BENCH_MIB", 256);
    let (v1, v2) = (
        tmp.join(format!("mixed-{mib}.v1")),
        tmp.join(format!("mixed-{mib}.v2")),
    );
    if !v1.exists() || !v2.exists() {
        let a = data::mixed(mib << 20, 1);
        std::fs::write(&v2, data::edit(&a, 200, 2)).unwrap();
        std::fs::write(&v1, a).unwrap();
    }
    vec![(format!("mixed {mib} MiB, 200 edits"), v1, v2)]
}

fn sqlite_pair(tmp: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    if !have("sqlite3") {
        eprintln!("sqlite3 missing: skipping the dump pair (apt-get install sqlite3)");
        return Vec::new();
    }
    let (v1, v2) = (tmp.join("dump-v1.sql"), tmp.join("dump-v2.sql"));
    if !v1.exists() || !v2.exists() {
        let db = tmp.join("bench.db");
        let _ = std::fs::remove_file(&db);
        let script = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, note TEXT);\n\
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) \
             INSERT INTO t SELECT i, 'item-' || (i * 7919 % 100003), i % 97, \
             hex(randomblob(12)) FROM n;\n";
        let sql = tmp.join("make.sql");
        std::fs::write(&sql, script).unwrap();
        assert!(sh(&format!("sqlite3 {} < {}", db.display(), sql.display())));
        assert!(sh(&format!(
            "sqlite3 {} .dump > {}",
            db.display(),
            v1.display()
        )));
        // 1% of rows updated, spread through the table.
        assert!(sh(&format!(
            "sqlite3 {} \"UPDATE t SET qty = qty + 1000, note = 'updated' WHERE id % 100 = 37\"",
            db.display()
        )));
        assert!(sh(&format!(
            "sqlite3 {} .dump > {}",
            db.display(),
            v2.display()
        )));
    }
    vec![("sqlite dump, 1% rows".into(), v1, v2)]
}

/// One mode's figures on one pair.
struct Figures {
    import1: f64,
    import2: f64,
    export: f64,
    grown: u64,
    stored1: u64,
    rss_kib: u64,
    deltas: u64,
    chunks: u64,
    index_bytes: u64,
    index_live: u64,
}

fn stats(hoard: &str, store: &Path) -> serde_json::Value {
    let out = Command::new(hoard)
        .arg("--store")
        .arg(store)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One run of one mode: import v1, import v2, export v2 (each timed), in a fresh store.
struct Run {
    import1: f64,
    import2: f64,
    export: f64,
    stored1: u64,
    grown: u64,
    rss_kib: u64,
    last: serde_json::Value,
    index_bytes: u64,
    index_live: u64,
}

/// Bytes of live data in a store's `chunks.redb`: its tables' stored bytes and B-tree
/// metadata, without the pages copy-on-write freed for reuse that the file also holds.
fn index_live_bytes(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    let s = tx.stats().unwrap();
    let live = s.stored_bytes() + s.metadata_bytes();
    tx.abort().unwrap();
    live
}

fn hoard_run(hoard: &str, tmp: &Path, delta: bool, v1: &Path, v2: &Path) -> Run {
    let store = tmp.join(format!("store-{delta}"));
    let _ = std::fs::remove_dir_all(&store);
    let st = store.to_str().unwrap();
    let mode = if delta { "on" } else { "off" };
    assert!(
        Command::new(hoard)
            .args(["--store", st, "init", "--delta", mode])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    // Wall time measured here (GNU time's is in hundredths: too coarse for the small
    // pairs); peak RSS from GNU time.
    let step = |args: &[&str], input: &Path| -> Step {
        prime(tmp);
        warm(input);
        let mut cmd = vec![hoard, "--store", st];
        cmd.extend_from_slice(args);
        let started = std::time::Instant::now();
        let mut s = timed(&cmd, &[], tmp);
        s.secs = started.elapsed().as_secs_f64();
        s
    };
    let a = step(&["import", v1.to_str().unwrap(), "--name", "v"], v1);
    let stored1 = stats(hoard, &store)["stored_bytes"].as_u64().unwrap();
    let b = step(&["import", v2.to_str().unwrap(), "--name", "v"], v2);
    let last = stats(hoard, &store);
    // Timed to /dev/null: this VM writes fresh file pages slowly and unevenly (1 GiB took
    // 1.1 to 1.5 s to write where hoard rebuilt it in 0.6 s); checked by an untimed export.
    let c = step(&["export", "v", "/dev/null"], v2);
    let out = tmp.join("out.bin");
    assert!(
        Command::new(hoard)
            .args(["--store", st, "export", "v", out.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(v2).unwrap(),
        "export differs"
    );
    let _ = std::fs::remove_file(&out);
    let index_bytes = std::fs::metadata(store.join("chunks.redb")).map_or(0, |m| m.len());
    let index_live = index_live_bytes(&store.join("chunks.redb"));
    let _ = std::fs::remove_dir_all(&store);
    Run {
        import1: a.secs,
        import2: b.secs,
        export: c.secs,
        stored1,
        grown: last["stored_bytes"].as_u64().unwrap() - stored1,
        rss_kib: a.rss_kib.max(b.rss_kib).max(c.rss_kib),
        last,
        index_bytes,
        index_live,
    }
}

/// Medians over `runs` (sizes are the same in every run).
fn figures(runs: Vec<Run>) -> Figures {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let last = &runs[runs.len() - 1];
    Figures {
        import1: m(|r| r.import1),
        import2: m(|r| r.import2),
        export: m(|r| r.export),
        grown: m(|r| r.grown as f64) as u64,
        stored1: m(|r| r.stored1 as f64) as u64,
        rss_kib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
        deltas: last.last["delta_chunks"].as_u64().unwrap_or(0),
        chunks: last.last["chunks"].as_u64().unwrap_or(0),
        index_bytes: last.index_bytes,
        index_live: last.index_live,
    }
}

/// casync's store growth for `v2` after `v1` (one run: sizes do not vary).
fn casync_growth(tmp: &Path, v1: &Path, v2: &Path) -> Option<u64> {
    if !have("casync") {
        return None;
    }
    let dir = tmp.join("casync");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!("--store={}", dir.join("store").display());
    let make = |v: &Path, idx: &str| {
        assert!(
            Command::new("casync")
                .args(["make", &store])
                .arg(dir.join(idx))
                .arg(v)
                .status()
                .unwrap()
                .success()
        );
    };
    make(v1, "v1.caibx");
    let a = du(&dir.join("store"));
    make(v2, "v2.caibx");
    let b = du(&dir.join("store"));
    let _ = std::fs::remove_dir_all(&dir);
    Some(b.saturating_sub(a))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let runs = env_num("HOARD_BENCH_RUNS", 3).max(1);
    let keep = std::env::var("HOARD_BENCH_DIR").ok().map(PathBuf::from);
    let scratch = tempfile::tempdir().unwrap();
    let tmp = keep.clone().unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&tmp).unwrap();
    let hoard =
        std::env::var("HOARD_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hoard").to_owned());
    if !have("casync") {
        eprintln!("casync not installed: its column stays empty (apt-get install casync)");
    }
    let mut pairs = Vec::new();
    pairs.extend(ext4_pairs(&tmp));
    pairs.extend(tar_pair(&tmp));
    pairs.extend(mixed_pair(&tmp));
    pairs.extend(sqlite_pair(&tmp));
    println!(
        "| pair | v2 size | growth: delta on | off | casync | on/casync | import v1 on/off | import v2 on/off | export on/off | deltas | peak RSS on | index B/chunk on/off: live (file) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, v1, v2) in &pairs {
        let size = std::fs::metadata(v2).unwrap().len();
        // Modes alternate, the first swapping each run, so neither always runs first.
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for run in 0..runs {
            for delta in [run % 2 == 0, run % 2 == 1] {
                let r = hoard_run(&hoard, &tmp, delta, v1, v2);
                if delta { on.push(r) } else { off.push(r) }
            }
        }
        let (on, off) = (figures(on), figures(off));
        let cas = casync_growth(&tmp, v1, v2);
        let mib = |b: u64| format!("{:.2} MiB", b as f64 / (1 << 20) as f64);
        let pct = |b: u64| format!("{} ({:.2}%)", mib(b), 100.0 * b as f64 / size as f64);
        let per_chunk = |f: &Figures, b: u64| b / f.chunks.max(1);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% | {} of {} | {:.1} MiB | {} / {} ({} / {}) |",
            mib(size),
            pct(on.grown),
            pct(off.grown),
            cas.map_or("-".into(), pct),
            cas.map_or("-".into(), |c| format!(
                "{:.2}x",
                on.grown as f64 / c.max(1) as f64
            )),
            100.0 * off.import1 / on.import1,
            100.0 * off.import2 / on.import2,
            100.0 * off.export / on.export,
            on.deltas,
            on.chunks,
            on.rss_kib as f64 / 1024.0,
            per_chunk(&on, on.index_live),
            per_chunk(&off, off.index_live),
            per_chunk(&on, on.index_bytes),
            per_chunk(&off, off.index_bytes),
        );
        eprintln!(
            "{name}: v1 stored {} (on) / {} (off); seconds import1 {:.2}/{:.2} import2 {:.2}/{:.2} export {:.2}/{:.2}",
            on.stored1,
            off.stored1,
            on.import1,
            off.import1,
            on.import2,
            off.import2,
            on.export,
            off.export
        );
    }
}
