//! Helpers shared by the end-to-end benches: timing child processes, priming the VM's page
//! allocator, medians, a `hoard serve` child and its peak RSS.

#![allow(dead_code)]

pub mod engines;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Wall time and peak RSS of one step.
pub struct Step {
    pub secs: f64,
    pub rss_kib: u64,
}

pub fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Reads a file once so the timed step starts from a warm page cache (this VM drops idle cache).
pub fn warm(path: &Path) {
    let _ = std::fs::read(path);
}

/// Writes and deletes a 1.5 GiB scratch file so the timed step that follows writes into memory
/// the VM has just used. On this kind of VM the first write into pages freed a while ago (or
/// never touched) runs at a fraction of memory speed, which would otherwise charge whichever
/// tool runs after a large delete; every tool gets the same priming before every step.
pub fn prime(tmp: &Path) {
    use std::io::Write;
    let path = tmp.join("prime.bin");
    let buf = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&path).expect("prime file");
    for _ in 0..1536 {
        f.write_all(&buf).expect("prime write");
    }
    drop(f);
    std::fs::remove_file(&path).expect("prime delete");
}

/// Reads what GNU time wrote with `-f "%e %M"`.
pub fn read_time(out: &Path) -> Step {
    let text = std::fs::read_to_string(out).expect("time output");
    let mut it = text.split_whitespace();
    let secs: f64 = it.next().and_then(|s| s.parse().ok()).expect("seconds");
    let rss_kib: u64 = it.next().and_then(|s| s.parse().ok()).expect("rss");
    Step { secs, rss_kib }
}

/// Runs `cmd` under GNU time; returns wall seconds and peak RSS.
pub fn timed(cmd: &[&str], envs: &[(&str, &str)], tmp: &Path) -> Step {
    let out = tmp.join("time.txt");
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&out)
        .args(cmd)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run /usr/bin/time");
    assert!(status.success(), "{cmd:?} failed");
    read_time(&out)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// The bench's working directory under `target/`: `HOARD_BENCH_DIR` if set (it keeps the
/// generated inputs between runs, and the stores of the last run), else a temp dir removed at
/// the end. Returns the guard of the temp dir, the directory, and whether it is kept.
pub fn bench_dir(prefix: &str) -> (tempfile::TempDir, std::path::PathBuf, bool) {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let kept = std::env::var_os("HOARD_BENCH_DIR").map(std::path::PathBuf::from);
    let tmp_root = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&target)
        .expect("tempdir");
    let dir = kept.clone().unwrap_or_else(|| tmp_root.path().to_owned());
    std::fs::create_dir_all(&dir).expect("bench dir");
    (tmp_root, dir, kept.is_some())
}

/// A `hoard serve` child process and its address.
pub struct Server {
    pub child: Child,
    pub url: String,
}

pub fn start_server(hoard: &str, store: &Path) -> Server {
    start_server_with(hoard, &["--store", store.to_str().unwrap()], &[])
}

/// `hoard STORE_ARGS serve` on 127.0.0.1 port 0, with `envs` set.
pub fn start_server_with(hoard: &str, store_args: &[&str], envs: &[(String, String)]) -> Server {
    let mut child = Command::new(hoard)
        .args(store_args)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start hoard serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("server address");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_owned();
    Server { child, url }
}

/// The two inputs in `tmp`, `v1.bin` and `v2.bin` of `mib` MiB each, made by `make` (given
/// the length) unless a kept bench directory holds them already.
pub fn inputs(
    tmp: &Path,
    kept: bool,
    mib: usize,
    make: impl FnOnce(usize) -> (Vec<u8>, Vec<u8>),
) -> (std::path::PathBuf, std::path::PathBuf) {
    eprintln!("generating {mib} MiB of mixed data and an edited copy");
    let (v1, v2) = (tmp.join("v1.bin"), tmp.join("v2.bin"));
    let n = mib << 20;
    if !kept || std::fs::metadata(&v1).map(|m| m.len()).ok() != Some(n as u64) {
        let (a, b) = make(n);
        std::fs::write(&v1, a).expect("write v1");
        std::fs::write(&v2, b).expect("write v2");
    }
    (v1, v2)
}

/// Peak RSS so far of a process, from /proc.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// SIGTERM (graceful shutdown), then wait; returns the peak RSS it reached.
pub fn stop_server(mut s: Server) -> u64 {
    let rss = vm_hwm_kib(s.child.id());
    let _ = Command::new("kill").arg(s.child.id().to_string()).status();
    let _ = s.child.wait();
    rss
}
