//! An engine stopped in the middle of a push to a server on a bucket store (or to three
//! behind the proxy), then started again: every server says 503 meanwhile, the push fails with
//! one clear line (or had finished, or bridged the outage with its retries), nothing committed
//! is lost, and the same push run again completes. These stop the shared PostgreSQL and SeaweedFS, so
//! `.ci/remote.sh` runs them alone, after the other remote tests, with `HOARD_TEST_OUTAGES=1`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::integration::cluster::Cluster;
use crate::integration::data::{edit, mixed};
use crate::integration::engines;
use crate::integration::net::{Api, ChildServer};
use crate::integration::remote_store::{json, remote};
use crate::integration::support::{Scratch, ok};

/// `.ci/engines.sh ACTION $ENGINES_DIR`: stops or starts one engine.
fn engines_sh(action: &str) {
    let dir = std::env::var("ENGINES_DIR").expect("ENGINES_DIR from engines.env");
    let st = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/engines.sh"))
        .args([action, &dir])
        .status()
        .unwrap();
    assert!(st.success(), ".ci/engines.sh {action} failed");
}

/// Starts the stopped engine when dropped.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        engines_sh(self.0);
    }
}

fn push(url: &str, name: &str, file: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoard"));
    c.args(["push", "--name", name, "--server", url]).arg(file);
    c
}

/// One server, or three behind the proxy (`cluster`); the engine `stop` stopped mid-push.
fn outage_mid_push(test: &str, stop: &str, start: &'static str, cluster: bool) {
    if std::env::var_os("HOARD_TEST_OUTAGES").is_none() {
        eprintln!("HOARD_TEST_OUTAGES not set: skipping {test} (.ci/remote.sh runs it alone)");
        return;
    }
    // The servers, where pushes go (the proxy's URL or the one server's), the store.
    let (servers, front, bucket, index, _cluster) = if cluster {
        let Some(mut c) = Cluster::start(test, 3) else {
            return;
        };
        let servers = std::mem::take(&mut c.servers);
        let (front, bucket, index) = (c.url.clone(), c.bucket.clone(), c.index.clone());
        (servers, front, bucket, index, Some(c))
    } else {
        let (Some(bucket), Some(index)) = (engines::bucket(test), engines::index(test)) else {
            return;
        };
        let server = ChildServer::start_from(remote(&bucket, &index));
        let front = server.url.clone();
        (vec![server], front, bucket, index, None)
    };
    let s = Scratch::new();
    let before = mixed(4 << 20, 71);
    let big = edit(&mixed(64 << 20, 72), 50, 73);
    let (f_before, f_big) = (s.file("before", &before), s.file("big", &big));
    ok(&mut push(&front, "before", &f_before));

    let mut cut = push(&front, "big", &f_big)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // What every server's /healthz answers once it answers `want`.
    let health = |want: u16, limit: Duration| {
        let t = Instant::now();
        let answers: Vec<String> = servers
            .iter()
            .map(|server| {
                let api = Api::from_url(&server.url);
                loop {
                    let (st, _, body) = api.call(api.req(reqwest::Method::GET, "/healthz"));
                    if st.as_u16() == want {
                        return String::from_utf8_lossy(&body).into_owned();
                    }
                    assert!(t.elapsed() < limit, "/healthz stayed {st}, not {want}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .collect();
        answers.concat()
    };
    assert_eq!(
        health(200, Duration::from_secs(10)),
        "ok\n".repeat(servers.len())
    );
    engines_sh(stop);
    // Started again whatever happens below, so later tests find it up.
    let _restart = Restart(start);
    // The server says it cannot serve while the engine is away (a load balancer takes it
    // out), within a health check's timeout.
    let down = health(503, Duration::from_secs(15));
    assert!(down.contains("unavailable"), "{down}");
    if cluster {
        // With every server out, the proxy answers for them, in their format.
        let api = Api::from_url(&front);
        let t = Instant::now();
        loop {
            let (st, body) = api.json(reqwest::Method::GET, "/v1/files");
            if st == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(body["error"], "unavailable", "{body}");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the proxy answered {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The push ends by itself (the client's and the server's timeouts are bounded).
    let started = Instant::now();
    let status = loop {
        if let Some(st) = cut.try_wait().unwrap() {
            break st;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "push hung");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::io::read_to_string(cut.stderr.take().unwrap()).unwrap();
    eprintln!("{test}: push during the outage: {status}: {err}");
    if !status.success() {
        // The client's retries are logged as they happen; the error is its last line.
        assert_eq!(status.code(), Some(1), "{err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("hoard: "), "{err}");
        assert!(
            last.contains("try again") || last.contains("unavailable"),
            "says what to do: {err}"
        );
    }
    drop(_restart);
    assert_eq!(
        health(200, Duration::from_secs(60)),
        "ok\n".repeat(servers.len())
    );
    // A push that said it succeeded recorded the file (one whose connection broke with a
    // broken pipe once exited 0 having recorded nothing).
    let listed = ok(remote(&bucket, &index).arg("ls"));
    assert_eq!(status.success(), listed.contains(" big\n"), "{listed}");
    let r = json(&ok(push(&front, "big", &f_big).arg("--json")));
    eprintln!("{test}: the push again: {r}");
    drop(servers);

    for (name, data) in [("before", &before), ("big", &big)] {
        let dest = s.path(&format!("out-{name}"));
        ok(remote(&bucket, &index).args(["export", name]).arg(&dest));
        assert!(
            std::fs::read(&dest).unwrap() == *data,
            "{name} byte-identical"
        );
    }
    let r = json(&ok(remote(&bucket, &index).args(["fsck", "--json"])));
    assert_eq!(r["clean"], true, "{r}");
}

#[test]
fn outage_of_the_database_mid_push() {
    outage_mid_push("outage_database", "stop-pg", "start-pg", false);
}

#[test]
fn outage_of_the_object_store_mid_push() {
    outage_mid_push("outage_object_store", "stop-weed", "start-weed", false);
}

#[test]
fn outage_of_the_database_mid_push_through_three_servers() {
    outage_mid_push("outage_cluster_database", "stop-pg", "start-pg", true);
}

#[test]
fn outage_of_the_object_store_mid_push_through_three_servers() {
    outage_mid_push(
        "outage_cluster_object_store",
        "stop-weed",
        "start-weed",
        true,
    );
}
