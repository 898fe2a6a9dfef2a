//! Helpers shared by the integration tests: the `hoard` binary, temp stores, sizes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hoard::ChunkerParams;

/// The default chunker params, spelled out for the size table.
pub const P: ChunkerParams = ChunkerParams::DEFAULT;

/// Sizes where chunking and paging change behaviour, each for a reason.
pub fn interesting_sizes() -> Vec<usize> {
    let (min, avg, max) = (P.min as usize, P.avg as usize, P.max as usize);
    vec![
        0,                    // empty file: no chunks, id of the empty string
        1,                    // one byte
        min - 1,              // shorter than the minimum chunk: one short chunk
        min,                  // exactly one minimum chunk
        avg,                  // the target size
        max,                  // the longest single chunk
        max + 1,              // forces a second chunk of one byte at most
        3 * 1024 * 1024 + 17, // several MiB: many chunks, crosses block boundaries
        9 * 1024 * 1024 + 5,  // more than two reader blocks
    ]
}

/// `hoard --store STORE ...`.
pub fn hoard(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoard"));
    c.arg("--store").arg(store).env_remove("HOARD_STORE");
    c
}

/// Runs a command with `stdin` as its input and returns its output.
pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hoard");
    let mut pipe = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait hoard");
    feeder.join().expect("feeder");
    out
}

/// Runs a command, asserts it succeeded, returns stdout as text.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run hoard");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command, asserts exit status `code`, returns stderr as text. A command that has not
/// ended after 60 s (a `serve` that was expected to refuse its arguments and listens instead)
/// is killed by its PID and fails the test.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hoard");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait hoard").is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after 60 s (killed): it was expected to fail");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait hoard");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

/// A temp dir with a `store` path inside (not created yet).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data).expect("write input");
        p
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The file id `b3sum` would print.
pub fn b3(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// True if the tests run as root (mounts, other users' permissions).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
