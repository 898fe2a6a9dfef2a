//! The engines the remote and cluster benches run on: SeaweedFS and PostgreSQL on loopback,
//! the ones named by the environment or a pair started with `.ci/engines.sh` (stopped by PID
//! when dropped), and the CPU seconds they use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use hoard::Hash;

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
