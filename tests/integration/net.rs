//! A real server on 127.0.0.1, port 0, for the HTTP tests: in this process (library) or as a
//! `hoard serve` child process (for kill -9). Nothing here mocks HTTP or the store.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;

use hoard::StoreConfig;
use hoard::client::{self, Client, PullOptions, PullReport, PushReport};
use hoard::server::{self, AppState, Auth, Limits};
use hoard::store::{ChunkStore, LocalStore};

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
        let (store, _) = LocalStore::open(root, config).expect("open store");
        let store: Arc<dyn ChunkStore> = Arc::new(store);
        let state = AppState::new(store, limits, auth).expect("state");
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
        let mut child = super::support::hoard(store)
            .args(["serve", "--listen", "127.0.0.1:0"])
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
