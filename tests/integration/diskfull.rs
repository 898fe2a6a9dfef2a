//! A full disk: a small tmpfs holds the store (skipped, with a message, where it cannot be
//! mounted). Import and push fail with a clear "no space" error (507 over HTTP), the store
//! stays consistent, and once space is freed everything works.

use std::path::{Path, PathBuf};
use std::process::Command;

use hoard::client::PullOptions;

use super::data;
use super::net::{TestServer, pull, push, rt};
use super::support::{Scratch, fails, hoard, ok};

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
    let err = fails(hoard(&store).arg("import").arg(&p2), 1);
    assert!(err.to_lowercase().contains("no space"), "{err}");

    let fsck: serde_json::Value =
        serde_json::from_str(&ok(hoard(&store).args(["fsck", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
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

    // Free space: the ballast, then what the failed import left behind (gc).
    std::fs::remove_file(fs.path("ballast")).unwrap();
    let gc: serde_json::Value =
        serde_json::from_str(&ok(hoard(&store).args(["gc", "--json"]))).unwrap();
    assert!(gc["bytes_freed"].as_u64().unwrap() > 0, "{gc}");
    ok(hoard(&store).arg("import").arg(&p2));
    ok(hoard(&store).args(["export", "f2"]).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), f2);
    let fsck: serde_json::Value =
        serde_json::from_str(&ok(hoard(&store).args(["fsck", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
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
    let fsck: serde_json::Value =
        serde_json::from_str(&ok(hoard(&store).args(["fsck", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
}
