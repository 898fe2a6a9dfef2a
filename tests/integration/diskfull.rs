//! A full disk: a small tmpfs holds the store (skipped, with a message, where it cannot be
//! mounted). Import and push fail with a clear "no space" error (507 over HTTP), the store
//! stays consistent, and once space is freed everything works.

use std::path::{Path, PathBuf};
use std::process::Command;

use hoard::client::PullOptions;

use super::data;
use super::net::{TestServer, pull, push, rt};
use super::support::{Scratch, fails, hoard, is_root, ok};

/// A tmpfs of `mib` MiB mounted on a temp dir; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "skipping the disk-full test: cannot mount a tmpfs ({}); run the tests as root to include it",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipping the disk-full test: no mount command ({e})");
                None
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `hoard fsck --json` on `store` says it is clean.
fn assert_fsck_clean(store: &Path) {
    let fsck: serde_json::Value =
        serde_json::from_str(&ok(hoard(store).args(["fsck", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
}

/// Fills the disk with a ballast file of `mib` MiB, the space "freed" later.
fn ballast(path: &Path, mib: usize) {
    std::fs::write(path, vec![7u8; mib << 20]).unwrap();
}

#[test]
fn import_on_a_full_disk_fails_clearly_and_works_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let s = Scratch::new();
    let store = fs.path("store");
    ok(hoard(&store).args(["init", "--min", "4K", "--avg", "16K", "--max", "64K"]));
    ballast(&fs.path("ballast"), 12);
    let f1 = data::random(8 << 20, 60);
    let f2 = data::random(16 << 20, 61);
    let (p1, p2) = (s.file("f1", &f1), s.file("f2", &f2));
    ok(hoard(&store).arg("import").arg(&p1));
    let packs = || entries_starting(&store.join("packs"), "");
    let before = packs();
    let err = fails(hoard(&store).arg("import").arg(&p2), 1);
    assert!(err.to_lowercase().contains("no space"), "{err}");
    // The failed import's pack holds nothing indexed: it is gone, not left for gc.
    assert_eq!(packs(), before);

    assert_fsck_clean(&store);
    let out = s.path("out");
    ok(hoard(&store).args(["export", "f1"]).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), f1);
    assert!(
        hoard(&store)
            .args(["export", "f2"])
            .arg(&out)
            .output()
            .unwrap()
            .status
            .code()
            == Some(1)
    );

    std::fs::remove_file(fs.path("ballast")).unwrap();
    ok(hoard(&store).arg("import").arg(&p2));
    ok(hoard(&store).args(["export", "f2"]).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), f2);
    assert_fsck_clean(&store);
}

#[test]
fn push_to_a_full_disk_gets_507_and_works_once_space_is_freed() {
    // 48 MiB with 30 of ballast: a 20 MiB file does not fit; without the ballast it fits
    // with room for what the failed attempts left behind.
    let Some(fs) = Tmpfs::mount(48) else { return };
    let s = Scratch::new();
    let store = fs.path("store");
    let server = TestServer::simple(&store, None);
    ballast(&fs.path("ballast"), 30);
    let big = data::random(20 << 20, 62);
    let p = s.file("big.bin", &big);
    let c = server.client();
    let err = push(&c, &p, "big.bin").expect_err("push onto a full disk");
    let msg = err.to_string();
    assert!(
        msg.contains("507") || msg.to_lowercase().contains("space"),
        "{msg}"
    );

    // A whole-file PUT (what curl -T sends) gets the status itself.
    let status = rt().block_on(async {
        reqwest::Client::new()
            .put(format!("{}/v1/files/curl.bin", server.url))
            .body(big.clone())
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 507);

    std::fs::remove_file(fs.path("ballast")).unwrap();
    push(&c, &p, "big.bin").unwrap();
    let out = s.path("back.bin");
    pull(&c, "big.bin", &out, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), big);
    server.stop();
    assert_fsck_clean(&store);
}

/// Fills what is left of the disk with a file at `path`.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![9u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
}

/// The names of the entries in `dir` that start with `prefix`.
fn entries_starting(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The chain an outside probe found: a full disk, then the tool's own advice, then gc, lost
/// every file. Each step must now say what is wrong (no space) and change nothing.
#[test]
fn a_full_disk_is_never_taken_for_damage_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let store = fs.path("store");
    ballast(&fs.path("ballast"), 4);
    let server = TestServer::simple(&store, None);
    let put = |name: &str, body: Vec<u8>| {
        rt().block_on(async {
            reqwest::Client::new()
                .put(format!("{}/v1/files/{name}", server.url))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let kept = data::random(30_000_000, 70);
    assert_eq!(put("kept.bin", kept.clone()), 201);
    assert_eq!(put("big.bin", data::random(50_000_000, 71)), 507);
    server.stop();
    // Whatever the failed upload left, the disk is full now.
    fill(&fs.path("filler"));

    // Opening on the full disk: "no space", not "damaged", and no advice to repair.
    let err = fails(hoard(&store).arg("ls"), 1);
    assert!(err.contains("space"), "{err}");
    assert!(
        !err.contains("damaged") && !err.contains("--repair"),
        "{err}"
    );
    // The repair the old message advised: refused for the same reason, nothing moved aside.
    let err = fails(hoard(&store).args(["fsck", "--repair"]), 1);
    assert!(err.contains("space"), "{err}");
    assert!(entries_starting(&store, "index.").is_empty());
    assert!(entries_starting(&store, "chunks.redb.").is_empty());

    // With space again every file is there, fsck agrees, and gc keeps them.
    std::fs::remove_file(fs.path("ballast")).unwrap();
    std::fs::remove_file(fs.path("filler")).unwrap();
    let ls = ok(hoard(&store).arg("ls"));
    assert!(ls.contains("kept.bin"), "{ls}");
    let fsck: serde_json::Value =
        serde_json::from_str(&ok(hoard(&store).args(["fsck", "--repair", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert_eq!(fsck["files"], 1, "{fsck}");
    ok(hoard(&store).arg("gc"));
    let out = fs.path("out");
    ok(hoard(&store).args(["export", "kept.bin"]).arg(&out));
    assert!(std::fs::read(&out).unwrap() == kept);
}

/// gc over HTTP on a full disk: compaction cannot write its copies. 507 (not 500), the store
/// keeps every file, no empty pack is left behind, and gc works once space is freed.
#[test]
fn gc_on_a_full_disk_gets_507_and_leaves_no_empty_packs() {
    let Some(fs) = Tmpfs::mount(40) else { return };
    let store = fs.path("store");
    let s = Scratch::new();
    let a = data::random(8 << 20, 72);
    let mut ab = a.clone();
    ab.extend(data::random(8 << 20, 73));
    // `ab` fills one pack; `a` shares its first half. Removing `ab` leaves that pack half
    // dead, so gc rewrites its live half, which needs room for a copy.
    ok(hoard(&store).arg("import").arg(s.file("ab", &ab)));
    ok(hoard(&store).arg("import").arg(s.file("a", &a)));
    ok(hoard(&store).args(["rm", "ab"]));
    let packs = || entries_starting(&store.join("packs"), "");
    let before = packs();
    let mut limits = hoard::server::Limits::default();
    limits.gc.grace = std::time::Duration::ZERO;
    limits.gc_interval = std::time::Duration::ZERO;
    let server = TestServer::start(&store, None, limits, hoard::server::Auth::default());
    fill(&fs.path("ballast"));
    let gc = || {
        rt().block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}/v1/gc", server.url))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (status, body) = gc();
    assert_eq!(status, 507, "{body}");
    assert!(!body.contains(&*fs.dir.path().to_string_lossy()), "{body}");
    for p in packs() {
        let len = std::fs::metadata(store.join("packs").join(&p))
            .unwrap()
            .len();
        assert!(len > 0, "gc left an empty pack {p} behind");
        assert!(
            before.contains(&p) || len > 8,
            "gc left a pack {p} with no entry"
        );
    }
    std::fs::remove_file(fs.path("ballast")).unwrap();
    let (status, body) = gc();
    assert_eq!(status, 200, "{body}");
    server.stop();
    let out = fs.path("out");
    ok(hoard(&store).args(["export", "a"]).arg(&out));
    assert!(std::fs::read(&out).unwrap() == a);
    assert_fsck_clean(&store);
}

/// A store on a file system remounted read-only: commands that read it work (without its
/// write lock, the index read from the journal), every command that would write says so (not
/// "damaged"), repair moves nothing, and once it is writable again everything is there.
#[test]
fn a_read_only_store_can_be_read_and_is_reported_as_such() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let store = fs.path("store");
    let s = Scratch::new();
    let f = data::random(1 << 20, 74);
    let g = data::mixed(3 << 20, 75);
    ok(hoard(&store)
        .arg("import")
        .arg(s.file("f", &f))
        .args(["--name", "f"]));
    ok(hoard(&store)
        .arg("import")
        .arg(s.file("g", &g))
        .args(["--name", "g"]));
    ok(hoard(&store).args(["rm", "g"]));
    ok(hoard(&store)
        .arg("import")
        .arg(s.path("g"))
        .args(["--name", "g2"]));
    let listed = ok(hoard(&store).args(["ls", "--json"]));
    let remount = |how: &str| {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(fs.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount {how}");
    };
    remount("ro");
    // Reading works, and says how the store was opened.
    let out = hoard(&store).args(["ls", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), listed);
    assert!(String::from_utf8_lossy(&out.stderr).contains("opened read-only"));
    ok(hoard(&store).arg("stats"));
    for (spec, want) in [("f", &f), ("g2", &g)] {
        let out = s.path(&format!("{spec}.out"));
        ok(hoard(&store).args(["export", spec]).arg(&out));
        assert!(std::fs::read(&out).unwrap() == *want, "{spec}");
    }
    // Writing does not, and says why.
    let imported = s.path("g");
    for args in [
        &["fsck"][..],
        &["fsck", "--repair"],
        &["gc"],
        &["rm", "f"],
        &["import", imported.to_str().unwrap()],
    ] {
        let err = fails(hoard(&store).args(args), 1);
        assert!(err.contains("read-only"), "{args:?}: {err}");
        assert!(
            !err.contains("damaged") && !err.contains("--repair"),
            "{args:?}: {err}"
        );
    }
    remount("rw");
    assert!(entries_starting(&store, "index.").is_empty());
    let out = fs.path("out");
    ok(hoard(&store).args(["export", "f"]).arg(&out));
    assert!(std::fs::read(&out).unwrap() == f);
    assert_eq!(ok(hoard(&store).args(["ls", "--json"])), listed);
}

/// A store whose files the user may read but not write (another user's): `ls` and `export`
/// work read-only; writing commands say "permission denied". Runs as `nobody` via setpriv
/// (root itself bypasses permissions).
#[test]
fn a_store_the_user_may_not_write_can_be_read() {
    let setpriv = Path::new("/usr/bin/setpriv");
    if !setpriv.exists() || !is_root() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let s = Scratch::new();
    let store = s.path("store");
    let f = data::mixed(2 << 20, 76);
    ok(hoard(&store)
        .arg("import")
        .arg(s.file("f", &f))
        .args(["--name", "f"]));
    // Readable by everyone, writable by its owner (root) alone.
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(s.path(""))
        .status()
        .unwrap();
    assert!(st.success());
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let as_nobody = |args: &[&str]| as_nobody(&store, args);
    let out = as_nobody(&["ls"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains('f'));
    assert!(
        err.contains("permission denied") && err.contains("opened read-only"),
        "{err}"
    );
    let exported = out_dir.path().join("f.out");
    ok(&mut as_nobody(&["export", "f", exported.to_str().unwrap()]));
    assert!(std::fs::read(&exported).unwrap() == f);
    for args in [&["gc"][..], &["rm", "f"], &["fsck", "--repair"]] {
        let err = fails(&mut as_nobody(args), 1);
        assert!(err.contains("permission denied"), "{args:?}: {err}");
        assert!(!err.contains("damaged"), "{args:?}: {err}");
    }
    assert_fsck_clean(&store);
}

/// `hoard --store STORE ARGS…` as user and group 65534 (nobody), without capabilities.
fn as_nobody(store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("/usr/bin/setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_hoard"))
        .arg("--store")
        .arg(store)
        .args(args);
    c
}
