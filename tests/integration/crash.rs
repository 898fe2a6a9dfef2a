//! kill -9 at random moments during import, push (the server killed), gc and compaction, on a
//! directory store and on a bucket store (real SeaweedFS + PostgreSQL from `.ci/remote.sh`).
//! After each kill: fsck is clean (unreferenced leftovers allowed), every file reported
//! stored before the kill exports byte for byte, and the interrupted operation, run again,
//! succeeds. `trials()` per kind: 10, or 50 with `HOARD_LONG_TESTS=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data;
use super::engines;
use super::faults::trials;
use super::net::ChildServer;
use super::support::{Scratch, hoard, ok};

/// Starts `cmd`, waits a random 0..`max_ms` ms, kills it with SIGKILL. True if it had
/// already finished successfully (then what it did counts as done).
pub fn kill_after(mut cmd: Command, rng: &mut StdRng, max_ms: u64) -> bool {
    let mut child: Child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(rng.random_range(0..max_ms)));
    if let Ok(Some(status)) = child.try_wait() {
        return status.success();
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// The store the trials run on.
struct Target {
    store: PathBuf,
    index: Option<String>,
    /// How many times longer its commands take than on a directory (kill windows scale).
    slow: u64,
}

impl Target {
    fn dir(s: &Scratch) -> Self {
        Target {
            store: s.store(),
            index: None,
            slow: 1,
        }
    }

    /// A fresh bucket prefix and database, or `None` without engines.
    fn remote(test: &str) -> Option<Self> {
        Some(Target {
            store: PathBuf::from(engines::bucket(test)?),
            index: Some(engines::index(test)?),
            slow: 4,
        })
    }

    /// `hoard --store STORE [--index INDEX]`.
    fn hoard(&self) -> Command {
        let mut c = hoard(&self.store);
        if let Some(i) = &self.index {
            c.arg("--index").arg(i);
        }
        c
    }
}

/// fsck of the store must be clean; returns its report.
fn assert_clean(t: &Target) -> serde_json::Value {
    let out = t.hoard().args(["fsck", "--json"]).output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("fsck: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["clean"], true, "{r}");
    r
}

/// Every file in `stored` exports byte for byte.
fn assert_all_export(t: &Target, s: &Scratch, stored: &[(String, Vec<u8>)]) {
    for (name, v) in stored {
        let out = s.path("out.bin");
        ok(t.hoard().args(["export", name]).arg(&out));
        assert_eq!(&std::fs::read(&out).unwrap(), v, "{name} changed");
    }
}

fn init_small(t: &Target) {
    init_small_with(t, &[]);
}

/// A store with small chunks, made with `more` flags to `init`.
fn init_small_with(t: &Target, more: &[&str]) {
    ok(t.hoard()
        .args(["init", "--min", "4K", "--avg", "16K", "--max", "64K"])
        .args(more));
}

#[test]
fn import_killed_at_random_moments_loses_nothing() {
    let s = Scratch::new();
    let t = Target::dir(&s);
    init_small(&t);
    import_kills(&t, &s);
}

#[test]
fn remote_import_killed_at_random_moments_loses_nothing() {
    let s = Scratch::new();
    if let Some(t) = Target::remote("remote_import_kills") {
        init_small(&t);
        import_kills(&t, &s);
    }
}

/// The same trials on a store that writes delta chunks (every edited copy stores its
/// changed chunks as deltas against the base's).
#[test]
fn import_writing_deltas_killed_at_random_moments_loses_nothing() {
    let s = Scratch::new();
    let t = Target::dir(&s);
    init_small_with(&t, &["--delta", "on"]);
    import_kills(&t, &s);
    assert_deltas_written(&t);
}

#[test]
fn remote_import_writing_deltas_killed_at_random_moments_loses_nothing() {
    let s = Scratch::new();
    if let Some(t) = Target::remote("remote_delta_import_kills") {
        init_small_with(&t, &["--delta", "on"]);
        import_kills(&t, &s);
        assert_deltas_written(&t);
    }
}

fn assert_deltas_written(t: &Target) {
    let out = ok(t.hoard().args(["stats", "--json"]));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        st["delta_chunks"].as_u64().unwrap() > 0,
        "no chunk was stored as a delta: {st}"
    );
}

fn import_kills(t: &Target, s: &Scratch) {
    let base = data::mixed(12 << 20, 40);
    let mut rng = StdRng::seed_from_u64(40);
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for trial in 0..trials() {
        // Edited copies of one base: each import both dedups and writes.
        let v = data::edit(&base, 20, trial);
        let p = s.file("in.bin", &v);
        let name = format!("t{trial}");
        let mut cmd = t.hoard();
        cmd.args(["import", "--name", &name]).arg(&p);
        let finished = kill_after(cmd, &mut rng, 70 * t.slow);
        killed += u64::from(!finished);
        assert_clean(t);
        assert_all_export(t, s, &stored);
        // Run again (or, if it had finished, once more: nothing changes).
        ok(t.hoard().args(["import", "--name", &name]).arg(&p));
        stored.push((name, v));
        assert_all_export(t, s, &stored[stored.len() - 1..]);
    }
    eprintln!(
        "import: {killed} of {} trials killed mid-way, all survived",
        trials()
    );
    assert!(killed > 0, "no import was killed mid-way");
    ok(t.hoard().args(["gc"]));
    let r = assert_clean(t);
    assert_eq!(r["unreferenced_entries"], 0, "gc left leftovers: {r}");
    assert_all_export(t, s, &stored);
}

#[test]
fn gc_and_compaction_killed_at_random_moments_lose_nothing() {
    let s = Scratch::new();
    gc_kills(&Target::dir(&s), &s);
}

#[test]
fn remote_gc_and_compaction_killed_at_random_moments_lose_nothing() {
    let s = Scratch::new();
    if let Some(t) = Target::remote("remote_gc_kills") {
        gc_kills(&t, &s);
    }
}

fn gc_kills(t: &Target, s: &Scratch) {
    init_small(t);
    let mut window = 60 * t.slow;
    let mut rng = StdRng::seed_from_u64(41);
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for trial in 0..trials() {
        // `a` and `b` share a half; removing `a` leaves its pack half dead, so gc rewrites it.
        let a = data::random(8 << 20, 500 + trial);
        let mut b = a[..(4 << 20)].to_vec();
        b.extend_from_slice(&data::random(2 << 20, 600 + trial));
        let (na, nb) = (format!("a{trial}"), format!("b{trial}"));
        ok(t.hoard()
            .args(["import", "--name", &na])
            .arg(s.file("a", &a)));
        ok(t.hoard()
            .args(["import", "--name", &nb])
            .arg(s.file("b", &b)));
        ok(t.hoard().args(["rm", &na]));
        kept.push((nb, b));
        let mut cmd = t.hoard();
        cmd.args(["gc", "--min-dead", "0.1"]);
        killed += u64::from(!kill_after(cmd, &mut rng, window));
        assert_clean(t);
        assert_all_export(t, s, &kept);
        // The next kill lands anywhere in a whole gc's run: the window is the time the
        // full run took (a bucket store's gc is slower than a directory's).
        let started = std::time::Instant::now();
        ok(t.hoard().args(["gc", "--min-dead", "0.1"]));
        window = (started.elapsed().as_millis() as u64).max(60);
        let r = assert_clean(t);
        assert_eq!(r["unreferenced_entries"], 0, "{r}");
    }
    eprintln!(
        "gc: {killed} of {} trials killed mid-way, all survived",
        trials()
    );
    assert!(killed > 0, "no gc was killed mid-way");
    assert_all_export(t, s, &kept);
}

#[test]
fn server_killed_during_pushes_loses_nothing() {
    let s = Scratch::new();
    push_kills(&Target::dir(&s), &s);
}

#[test]
fn remote_server_killed_during_pushes_loses_nothing() {
    let s = Scratch::new();
    if let Some(t) = Target::remote("remote_push_kills") {
        push_kills(&t, &s);
    }
}

fn push_kills(t: &Target, s: &Scratch) {
    init_small(t);
    let base = data::mixed(12 << 20, 42);
    let mut rng = StdRng::seed_from_u64(42);
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for trial in 0..trials() {
        let v = data::edit(&base, 20, 100 + trial);
        let p = s.file("in.bin", &v);
        let name = format!("p{trial}");
        let server = ChildServer::start_from(t.hoard());
        let mut push = Command::new(env!("CARGO_BIN_EXE_hoard"));
        push.args(["push", "--name", &name, "--server", &server.url])
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut client = push.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..180 * t.slow)));
        let pushed = matches!(client.try_wait(), Ok(Some(st)) if st.success());
        server.kill();
        let _ = client.kill();
        let _ = client.wait();
        killed += u64::from(!pushed);
        // The server is gone: the store is free for the CLI.
        assert_clean(t);
        assert_all_export(t, s, &stored);
        let server = ChildServer::start_from(t.hoard());
        let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(["push", "--name", &name, "--server", &server.url])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.kill();
        stored.push((name, v));
        assert_all_export(t, s, &stored[stored.len() - 1..]);
    }
    eprintln!(
        "push: {killed} of {} trials cut off by a killed server, all survived",
        trials()
    );
    assert!(killed > 0, "no push was cut off");
    assert_clean(t);
    assert_all_export(t, s, &stored);
}
