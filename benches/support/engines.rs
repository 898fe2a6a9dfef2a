//! The engines the remote and cluster benches run on: SeaweedFS and PostgreSQL on loopback,
//! the ones named by the environment or a pair started with `.ci/engines.sh` (stopped by PID
//! when dropped), and the CPU seconds they use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hoard::Hash;

use super::{Step, read_time};

/// The engines' variables (endpoint, credentials) for every child, when this bench started
/// them.
pub static ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

pub fn engine_env() -> Vec<(String, String)> {
    ENV.get().cloned().unwrap_or_default()
}

/// Engines on loopback: the ones named by the environment, or a pair this bench started.
pub struct Engines {
    pub bucket: String,
    pub index: String,
    started: Option<PathBuf>,
}

impl Engines {
    pub fn up() -> Self {
        if let (Ok(bucket), Ok(index)) = (
            std::env::var("HOARD_TEST_BUCKET"),
            std::env::var("HOARD_TEST_INDEX"),
        ) {
            return Engines {
                bucket,
                index,
                started: None,
            };
        }
        let dir = tempfile::Builder::new()
            .prefix("hoard-bench-engines.")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let _ = Command::new("chmod").arg("755").arg(&dir).status();
        let st = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/engines.sh"))
            .arg("start")
            .arg(&dir)
            .status()
            .expect("run .ci/engines.sh");
        assert!(st.success(), ".ci/engines.sh start failed");
        let vars: HashMap<String, String> = std::fs::read_to_string(dir.join("engines.env"))
            .expect("engines.env")
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let _ = ENV.set(vars.clone().into_iter().collect());
        Engines {
            bucket: vars["HOARD_TEST_BUCKET"].clone(),
            index: vars["HOARD_TEST_INDEX"].clone(),
            started: Some(dir),
        }
    }

    /// A fresh prefix of the bucket and a fresh database for it.
    pub fn store(&self, name: &str) -> (String, String) {
        let tag = &Hash::fresh(name.as_bytes()).to_hex()[..12];
        let db = format!("bench_{name}_{tag}");
        sql(&self.index, &format!("CREATE DATABASE {db}"));
        let (server, _) = self.index.rsplit_once('/').expect("a database in the URL");
        (
            format!("{}/bench-{name}-{tag}", self.bucket),
            format!("{server}/{db}"),
        )
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        if let Some(dir) = &self.started {
            let _ = Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/engines.sh"))
                .arg("stop")
                .arg(dir)
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn sql(url: &str, statements: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the index");
        let conn = tokio::spawn(conn);
        client.batch_execute(statements).await.expect(statements);
        drop(client);
        let _ = conn.await;
    });
}

/// The engines' PIDs (SeaweedFS, the PostgreSQL postmaster), from the bench's own engines or
/// `ENGINES_WEED_PID`/`ENGINES_PG_PID` as `.ci/engines.sh` writes them.
pub fn engine_pids() -> Vec<u32> {
    let env = engine_env();
    ["ENGINES_WEED_PID", "ENGINES_PG_PID"]
        .iter()
        .filter_map(|k| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        })
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// CPU seconds the engines used so far: their own and their reaped children's (PostgreSQL's
/// backends), from /proc.
pub fn engine_cpu() -> f64 {
    engine_pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name: utime, stime, cutime, cstime are 12..16.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<f64> = rest
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|x| x.parse().ok())
                .collect();
            f.iter().sum::<f64>() / 100.0
        })
        .sum()
}

/// CPU seconds of one step: hoard's (user + sys) and the engines' meanwhile.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub hoard: f64,
    pub engines: f64,
}

/// Runs `hoard ARGS` under GNU time; returns the step and its stdout.
pub fn timed_hoard(hoard: &str, args: &[&str], tmp: &Path) -> (Step, String) {
    let (step, _, out) = timed_hoard_cpu(hoard, args, tmp);
    (step, out)
}

/// As [`timed_hoard`], with the CPU seconds of hoard and of the engines during the step.
pub fn timed_hoard_cpu(hoard: &str, args: &[&str], tmp: &Path) -> (Step, Cpu, String) {
    let out = tmp.join("time.txt");
    let engines_before = engine_cpu();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%e %M %U %S", "-o"])
        .arg(&out)
        .arg(hoard)
        .args(args)
        .envs(engine_env())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run /usr/bin/time");
    assert!(
        o.status.success(),
        "hoard {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // PostgreSQL reaps the step's backends as they notice their client is gone.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let engines = engine_cpu() - engines_before;
    let text = std::fs::read_to_string(&out).expect("time output");
    let hoard_cpu = text
        .split_whitespace()
        .skip(2)
        .filter_map(|x| x.parse::<f64>().ok())
        .sum();
    (
        read_time(&out),
        Cpu {
            hoard: hoard_cpu,
            engines,
        },
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}
