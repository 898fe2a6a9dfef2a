//! kill -9 at random moments during import, push (the server killed), gc and compaction.
//! After each kill: fsck is clean (unreferenced leftovers allowed), every file reported
//! stored before the kill exports byte for byte, and the interrupted operation, run again,
//! succeeds. `trials()` per kind: 10, or 50 with `HOARD_LONG_TESTS=1`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data;
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

/// fsck of the store must be clean; returns its report.
fn assert_clean(store: &Path) -> serde_json::Value {
    let out = hoard(store).args(["fsck", "--json"]).output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("fsck: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["clean"], true, "{r}");
    r
}

/// Every file in `stored` exports byte for byte.
fn assert_all_export(s: &Scratch, stored: &[(String, Vec<u8>)]) {
    for (name, v) in stored {
        let out = s.path("out.bin");
        ok(hoard(&s.store()).args(["export", name]).arg(&out));
        assert_eq!(&std::fs::read(&out).unwrap(), v, "{name} changed");
    }
}

fn init_small(store: &Path) {
    ok(hoard(store).args(["init", "--min", "4K", "--avg", "16K", "--max", "64K"]));
}

#[test]
fn import_killed_at_random_moments_loses_nothing() {
    let s = Scratch::new();
    init_small(&s.store());
    let base = data::mixed(12 << 20, 40);
    let mut rng = StdRng::seed_from_u64(40);
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for trial in 0..trials() {
        // Edited copies of one base: each import both dedups and writes.
        let v = data::edit(&base, 20, trial);
        let p = s.file("in.bin", &v);
        let name = format!("t{trial}");
        let mut cmd = hoard(&s.store());
        cmd.args(["import", "--name", &name]).arg(&p);
        let finished = kill_after(cmd, &mut rng, 70);
        killed += u64::from(!finished);
        assert_clean(&s.store());
        assert_all_export(&s, &stored);
        // Run again (or, if it had finished, once more: nothing changes).
        ok(hoard(&s.store()).args(["import", "--name", &name]).arg(&p));
        stored.push((name, v));
        assert_all_export(&s, &stored[stored.len() - 1..]);
    }
    eprintln!(
        "import: {killed} of {} trials killed mid-way, all survived",
        trials()
    );
    assert!(killed > 0, "no import was killed mid-way");
    ok(hoard(&s.store()).args(["gc"]));
    let r = assert_clean(&s.store());
    assert_eq!(r["unreferenced_entries"], 0, "gc left leftovers: {r}");
    assert_all_export(&s, &stored);
}

#[test]
fn gc_and_compaction_killed_at_random_moments_lose_nothing() {
    let s = Scratch::new();
    init_small(&s.store());
    let mut rng = StdRng::seed_from_u64(41);
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for trial in 0..trials() {
        // `a` and `b` share a half; removing `a` leaves its pack half dead, so gc rewrites it.
        let a = data::random(8 << 20, 500 + trial);
        let mut b = a[..(4 << 20)].to_vec();
        b.extend_from_slice(&data::random(2 << 20, 600 + trial));
        let (na, nb) = (format!("a{trial}"), format!("b{trial}"));
        ok(hoard(&s.store())
            .args(["import", "--name", &na])
            .arg(s.file("a", &a)));
        ok(hoard(&s.store())
            .args(["import", "--name", &nb])
            .arg(s.file("b", &b)));
        ok(hoard(&s.store()).args(["rm", &na]));
        kept.push((nb, b));
        let mut cmd = hoard(&s.store());
        cmd.args(["gc", "--min-dead", "0.1"]);
        killed += u64::from(!kill_after(cmd, &mut rng, 60));
        assert_clean(&s.store());
        assert_all_export(&s, &kept);
        ok(hoard(&s.store()).args(["gc", "--min-dead", "0.1"]));
        let r = assert_clean(&s.store());
        assert_eq!(r["unreferenced_entries"], 0, "{r}");
    }
    eprintln!(
        "gc: {killed} of {} trials killed mid-way, all survived",
        trials()
    );
    assert!(killed > 0, "no gc was killed mid-way");
    assert_all_export(&s, &kept);
}

#[test]
fn server_killed_during_pushes_loses_nothing() {
    let s = Scratch::new();
    init_small(&s.store());
    let base = data::mixed(12 << 20, 42);
    let mut rng = StdRng::seed_from_u64(42);
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut killed = 0;
    for trial in 0..trials() {
        let v = data::edit(&base, 20, 100 + trial);
        let p = s.file("in.bin", &v);
        let name = format!("p{trial}");
        let server = ChildServer::start(&s.store());
        let mut push = Command::new(env!("CARGO_BIN_EXE_hoard"));
        push.args(["push", "--name", &name, "--server", &server.url])
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut client = push.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..180)));
        let pushed = matches!(client.try_wait(), Ok(Some(st)) if st.success());
        server.kill();
        let _ = client.kill();
        let _ = client.wait();
        killed += u64::from(!pushed);
        // The server is gone: the store is free for the CLI.
        assert_clean(&s.store());
        assert_all_export(&s, &stored);
        let server = ChildServer::start(&s.store());
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
        assert_all_export(&s, &stored[stored.len() - 1..]);
    }
    eprintln!(
        "push: {killed} of {} trials cut off by a killed server, all survived",
        trials()
    );
    assert!(killed > 0, "no push was cut off");
    assert_clean(&s.store());
    assert_all_export(&s, &stored);
}
