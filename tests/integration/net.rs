//! A real server on 127.0.0.1, port 0, for the HTTP tests: in this process (library) or as a
//! `hoard serve` child process (for kill -9). Nothing here mocks HTTP or the store.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoard::StoreConfig;
use hoard::client::{self, Client, PullOptions, PullReport, PushReport};
use hoard::server::{self, AppState, Auth, Limits, Options};
use hoard::store::{ChunkStore, LocalStore};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// A runtime for the async client calls of a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `hoard serve` running in this process on its own runtime thread.
pub struct TestServer {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Serves the store at `root` (created with `config` if new).
    pub fn start(root: &Path, config: Option<StoreConfig>, limits: Limits, auth: Auth) -> Self {
        Self::start_with(root, config, limits, auth, Options::default())
    }

    /// As [`TestServer::start`], with CORS origins and webhooks.
    pub fn start_with(
        root: &Path,
        config: Option<StoreConfig>,
        limits: Limits,
        auth: Auth,
        options: Options,
    ) -> Self {
        let (store, _) = LocalStore::open(root, config).expect("open store");
        Self::serving(Arc::new(store), limits, auth, options)
    }

    /// Serves `store`.
    pub fn serving(
        store: Arc<dyn ChunkStore>,
        limits: Limits,
        auth: Auth,
        options: Options,
    ) -> Self {
        let state = AppState::with_options(store, limits, auth, options).expect("state");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            rt().block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(l.local_addr().expect("addr"))
                    .expect("send addr");
                server::serve(l, state, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("server address");
        TestServer {
            url: format!("http://{addr}"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Defaults everywhere; the store is created with `config`.
    pub fn simple(root: &Path, config: Option<StoreConfig>) -> Self {
        Self::start(root, config, Limits::default(), Auth::default())
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, None).expect("client")
    }

    /// Stops it and waits until the store is closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Plain HTTP calls to a test server, blocking.
pub struct Api {
    pub rt: tokio::runtime::Runtime,
    pub http: reqwest::Client,
    pub url: String,
}

impl Api {
    pub fn new(server: &TestServer) -> Self {
        Self::from_url(&server.url)
    }

    /// Calls to the server at `url` (a child server).
    pub fn from_url(url: &str) -> Self {
        Api {
            rt: rt(),
            http: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    /// Sends a request and returns status, headers and the body as JSON (null if not JSON).
    pub fn call_json(&self, rb: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
        let (s, h, b) = self.call(rb);
        (s, h, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Sends a request and returns status, headers and body.
    pub fn call(&self, rb: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Vec<u8>) {
        self.rt.block_on(async {
            let r = rb.send().await.expect("request");
            let (s, h) = (r.status(), r.headers().clone());
            (s, h, r.bytes().await.expect("body").to_vec())
        })
    }

    /// As [`Api::call`], a failure to connect or to read the answer returned, not a panic.
    pub fn try_call(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> reqwest::Result<(StatusCode, HeaderMap, Vec<u8>)> {
        self.rt.block_on(async {
            let r = rb.send().await?;
            let (s, h) = (r.status(), r.headers().clone());
            Ok((s, h, r.bytes().await?.to_vec()))
        })
    }

    pub fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(m, format!("{}{path}", self.url))
    }

    pub fn json(&self, m: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let (s, _, b) = self.call(self.req(m, path));
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub fn stats(&self) -> Value {
        self.json(reqwest::Method::GET, "/v1/stats").1
    }
}

/// A webhook receiver on 127.0.0.1: keeps every JSON body POSTed to it.
pub struct HookReceiver {
    pub url: String,
    events: Arc<Mutex<Vec<Value>>>,
    _server: std::thread::JoinHandle<()>,
}

impl HookReceiver {
    pub fn start() -> Self {
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = events.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            rt().block_on(async move {
                let app = axum::Router::new().route(
                    "/hook",
                    axum::routing::post(move |axum::Json(v): axum::Json<Value>| async move {
                        kept.lock().unwrap().push(v);
                        "ok"
                    }),
                );
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                // Lives as long as the test process; each test has its own port.
                axum::serve(l, app).await.unwrap();
            });
        });
        let addr = addr_rx.recv().expect("hook receiver address");
        HookReceiver {
            url: format!("http://{addr}/hook"),
            events,
            _server: server,
        }
    }

    /// Waits (at most `limit`) until the events so far satisfy `done`; returns them.
    pub fn wait_until(&self, done: impl Fn(&[Value]) -> bool, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let evs = self.events.lock().unwrap().clone();
            if done(&evs) {
                return evs;
            }
            assert!(Instant::now() < deadline, "hook events so far: {evs:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first event that matches `want`.
    pub fn wait_for(&self, want: impl Fn(&Value) -> bool, limit: Duration) -> Value {
        let evs = self.wait_until(|evs| evs.iter().any(&want), limit);
        evs.into_iter().find(|e| want(e)).expect("matched")
    }
}

/// `hoard serve` as a child process (so a test can kill -9 it).
pub struct ChildServer {
    pub url: String,
    child: Child,
}

impl ChildServer {
    pub fn start(store: &Path) -> Self {
        Self::spawn(store, Stdio::null())
    }

    /// As [`ChildServer::start`], with its log (stderr) going to `log`.
    pub fn start_logging(store: &Path, log: &Path) -> Self {
        Self::spawn(store, std::fs::File::create(log).expect("log file").into())
    }

    fn spawn(store: &Path, stderr: Stdio) -> Self {
        Self::spawn_from(super::support::hoard(store), stderr)
    }

    /// `serve` on loopback from `hoard` (a command with its store flags given).
    pub fn start_from(hoard: Command) -> Self {
        Self::spawn_from(hoard, Stdio::null())
    }

    /// As [`ChildServer::start_from`], listening at `addr` (`127.0.0.1:PORT`, or port 0),
    /// with `serve_args` given to `serve`.
    /// Its log goes to the file `HOARD_TEST_SERVER_LOG` names (appended to), if set.
    pub fn start_at(mut hoard: Command, addr: &str, serve_args: &[String]) -> Self {
        hoard.args(["serve", "--listen", addr]).args(serve_args);
        let log = std::env::var_os("HOARD_TEST_SERVER_LOG").map_or_else(Stdio::null, |p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("server log file")
                .into()
        });
        Self::spawn_serving(hoard, log)
    }

    /// `hoard` as given: a command that already says `serve` and where to listen.
    pub fn start_command(hoard: Command) -> Self {
        Self::spawn_serving(hoard, Stdio::null())
    }

    /// Its process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn_from(mut hoard: Command, stderr: Stdio) -> Self {
        hoard.args(["serve", "--listen", "127.0.0.1:0"]);
        Self::spawn_serving(hoard, stderr)
    }

    fn spawn_serving(mut hoard: Command, stderr: Stdio) -> Self {
        let mut child = hoard
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn hoard serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ChildServer { url, child }
    }

    /// SIGTERM, then waits for it to drain and exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        self.child.wait().is_ok_and(|s| s.success())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `path` as `name` and returns the report.
pub fn push(c: &Client, path: &Path, name: &str) -> hoard::Result<PushReport> {
    rt().block_on(client::push(
        c,
        path,
        Some(name.to_owned()),
        Arc::new(client::Quiet),
    ))
}

/// Pulls `spec` into `out`.
pub fn pull(c: &Client, spec: &str, out: &Path, opts: PullOptions) -> hoard::Result<PullReport> {
    rt().block_on(client::pull(c, spec, out, opts, Arc::new(client::Quiet)))
}

/// Pushes `v1`, then `v2` (an edited copy of it), as `disk.img` through `c`; checks that v2
/// sent at most `1/share` of its bytes (only its edits crossed) and that both versions pull
/// back byte-identical.
pub fn push_edit_and_pull(
    c: &Client,
    s: &super::support::Scratch,
    v1: &[u8],
    v2: &[u8],
    share: u64,
) {
    let r1 = push(c, &s.file("v1", v1), "disk.img").unwrap();
    assert_eq!(r1.id.to_hex(), super::support::b3(v1));
    let r2 = push(c, &s.file("v2", v2), "disk.img").unwrap();
    assert!(
        r2.bytes_sent <= v2.len() as u64 / share,
        "v2 sent {} of {}",
        r2.bytes_sent,
        v2.len()
    );
    for (spec, want) in [("disk.img@1", v1), ("disk.img", v2)] {
        let out = s.path(spec);
        pull(c, spec, &out, PullOptions::default()).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{spec} pulls byte-identical"
        );
    }
}
