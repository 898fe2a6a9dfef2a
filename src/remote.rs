//! The network commands of the binary: `serve`, `push` and `pull`. Each builds its tokio
//! runtime here; the library does the work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hoard::client::{self, Client, PullOptions};
use hoard::server::{self, AppState, Limits, TokensSource};
use hoard::store::{ChunkStore, LocalStore};

use crate::location::Location;
use serde_json::json;

use crate::output;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A bearer token, `TOKEN` or `write:TOKEN` (reads and writes) or `read:TOKEN`; repeatable.
    #[arg(
        long = "token",
        value_name = "[SCOPE:]TOKEN",
        env = "HOARD_TOKENS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    tokens: Vec<String>,
    /// A file of tokens, one `read TOKEN` or `write TOKEN` per line (`#` comments); any
    /// other line stops the server, naming the line.
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<PathBuf>,
    /// Let anyone who can reach the server read (writes still need a token).
    #[arg(long)]
    public_read: bool,
    /// Allow listening on a non-loopback address without any token.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Largest chunk accepted, at most 16M (K and M suffixes allowed).
    #[arg(long, value_parser = hoard::args::parse_size, default_value = "1M")]
    max_chunk: u32,
    /// Largest body of a chunk batch, manifest or id list.
    #[arg(long, value_parser = hoard::args::parse_size, default_value = "64M")]
    max_body: u32,
    /// Most ids in one missing query or fetch.
    #[arg(long, default_value_t = 1 << 20)]
    max_ids: usize,
    /// Deadline for requests without a streamed body (e.g. `5m`, `30s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    request_timeout: Duration,
    /// Longest pause allowed inside a streamed body.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    idle_timeout: Duration,
    /// Requests served at once; more wait.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Upload sessions idle this long expire.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    session_ttl: Duration,
    /// Run gc this often in the background (`0s`: never; `POST /v1/gc` runs it on demand).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    gc_interval: Duration,
    /// gc keeps chunks reported present or uploaded within this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    gc_grace: Duration,
    /// gc rewrites a pack once this share of it (0.0..=1.0) is dead.
    #[arg(long, value_parser = hoard::args::parse_share, default_value_t = hoard::gc::DEFAULT_MIN_DEAD)]
    gc_min_dead: f64,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may sit idle.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    header_timeout: Duration,
    /// Connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Least bytes a second a streamed body must bring, averaged over each --idle-timeout
    /// (K and M suffixes; 0: no minimum).
    #[arg(long, value_parser = hoard::args::parse_size_u64, default_value = "1K")]
    min_body_rate: u64,
    /// After SIGTERM or Ctrl-C, how long requests in flight may go on.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    shutdown_timeout: Duration,
    /// Open upload sessions, and unfinished tus uploads, each at most this many (more get 503
    /// with Retry-After).
    #[arg(long, default_value_t = 1000)]
    max_uploads: usize,
    /// Largest upload the tus endpoint accepts (`Tus-Max-Size`; K, M, G, T suffixes).
    #[arg(long, value_parser = hoard::args::parse_size_u64, default_value = "1T")]
    tus_max_size: u64,
    /// An origin whose web pages may call this server (CORS), e.g. `https://app.example.com`;
    /// repeatable. None by default: only the server's own page at `/`.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// POST a JSON event here when an upload starts, completes, fails or expires; repeatable.
    #[arg(long = "hook-url", value_name = "URL")]
    hook_urls: Vec<reqwest::Url>,
    /// Deadline of one webhook delivery attempt.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    hook_timeout: Duration,
    /// Attempts after a failed webhook delivery (backoff 0.5 s, doubling).
    #[arg(long, default_value_t = 3)]
    hook_retries: u32,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(long, env = "HOARD_SERVER", value_name = "URL")]
    server: String,
    /// Bearer token for the server.
    #[arg(long, env = "HOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PushArgs {
    /// The file to push.
    file: PathBuf,
    /// Name to record it under [default: the file's name].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct PullArgs {
    /// NAME, NAME@N, a file id or an id prefix.
    file: String,
    /// Where to write it.
    out: PathBuf,
    /// An older local copy: its chunks are reused instead of downloaded.
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Re-runs this process with `MALLOC_ARENA_MAX=2` and `MALLOC_MMAP_THRESHOLD_=262144`
/// unless `MALLOC_ARENA_MAX` is set (glibc only). glibc's malloc gives each busy thread its
/// own arena and keeps freed request buffers there: measured on the loopback bench, a server's
/// peak RSS went from 117–150 MiB to 99 MiB with two arenas, at the same speed; push and pull
/// clients likewise. And it raises its mmap threshold each time a large block is freed (up to
/// 32 MiB), after which multi-MiB batch buffers come from the arenas and stay there: a fixed
/// 256 KiB threshold took a server taking eight pushes at once from 154 to 105–112 MiB peak,
/// for about 5% more time. `exec` keeps the PID, so signals and supervisors are unaffected.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        use std::os::unix::process::CommandExt;
        let mut again = std::process::Command::new(exe);
        again
            .args(std::env::args_os().skip(1))
            .env("MALLOC_ARENA_MAX", "2");
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            again.env("MALLOC_MMAP_THRESHOLD_", "262144");
        }
        let err = again.exec();
        // exec returns only if it failed: serve anyway, with glibc's default arenas.
        eprintln!("hoard: note: could not limit malloc arenas ({err}); serving anyway");
    }
}

pub fn serve(store: Box<dyn ChunkStore>, at: &Location, a: &ServeArgs) -> Result<()> {
    init_logs("info");
    let tokens = TokensSource {
        specs: a.tokens.clone(),
        file: a.tokens_file.clone(),
        public_read: a.public_read,
    };
    let auth = tokens.load()?;
    // FastCDC 2020 never cuts past 16 MiB; fsck takes longer entries for damage.
    anyhow::ensure!(
        a.max_chunk <= 16 << 20,
        "--max-chunk {} is over 16M, the largest chunk a store holds",
        a.max_chunk
    );
    server::check_exposure(a.listen, &auth, a.insecure_no_auth)?;
    let limits = Limits {
        max_chunk: a.max_chunk,
        max_body: a.max_body as usize,
        max_ids: a.max_ids,
        request_timeout: a.request_timeout,
        idle_timeout: a.idle_timeout,
        concurrency: a.concurrency.max(1),
        session_ttl: a.session_ttl,
        gc_interval: a.gc_interval,
        gc: hoard::gc::GcOptions {
            grace: a.gc_grace,
            min_dead: a.gc_min_dead,
        },
        tus_max_size: a.tus_max_size,
        header_timeout: a.header_timeout,
        max_connections: a.max_connections,
        min_body_rate: a.min_body_rate,
        shutdown_timeout: a.shutdown_timeout,
        max_uploads: a.max_uploads,
    };
    let options = server::Options {
        cors_origins: a.cors_origins.clone(),
        hooks: server::HookConfig {
            urls: a.hook_urls.clone(),
            timeout: a.hook_timeout,
            retries: a.hook_retries,
        },
        tokens: Some(tokens),
    };
    let store: Arc<dyn ChunkStore> = Arc::from(store);
    let state = AppState::with_options(store, limits, auth, options)?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        // The first line on stdout is the address, for scripts and tests that pass port 0.
        println!("listening on http://{addr}");
        tracing::info!(store = %at, %addr, "hoard serving");
        server::serve(listener, state, server::shutdown_signal())
            .await
            .context("server failed")
    })
}

/// A push's progress on one bar: bytes read and hashed, with what was skipped and sent.
struct PushBar {
    bar: indicatif::ProgressBar,
    skipped: AtomicU64,
    sent: AtomicU64,
}

impl PushBar {
    fn show(&self) {
        self.bar.set_message(format!(
            "pushing ({} already there, {} sent)",
            output::bytes(self.skipped.load(Ordering::Relaxed)),
            output::bytes(self.sent.load(Ordering::Relaxed)),
        ));
    }
}

impl client::Progress for PushBar {
    fn scanned(&self, n: u64) {
        self.bar.inc(n);
    }
    fn skipped(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
        self.show();
    }
    fn moved(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.show();
    }
}

/// A pull's progress: bytes downloaded or found locally.
struct PullBar(indicatif::ProgressBar);

impl client::Progress for PullBar {
    fn skipped(&self, n: u64) {
        self.0.inc(n);
    }
    fn moved(&self, n: u64) {
        self.0.inc(n);
    }
}

fn emit_json(v: serde_json::Value) -> Result<()> {
    crate::output::emit(&format!("{v}\n"))
}

pub fn push(a: &PushArgs) -> Result<()> {
    init_logs("warn");
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("give the file a name with --name")?,
    };
    hoard::names::validate(&name).context("choose another name with --name")?;
    let size = std::fs::metadata(&a.file)
        .with_context(|| format!("cannot open {}", a.file.display()))?
        .len();
    let bars = Arc::new(PushBar {
        bar: output::bar(Some(size), "pushing"),
        skipped: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    let c = Client::new(&a.server.server, a.server.token.clone())?;
    let report = runtime()?
        .block_on(client::push(&c, &a.file, Some(name.clone()), bars.clone()))
        .with_context(|| format!("cannot push {} to {}", a.file.display(), a.server.server))?;
    bars.bar.finish_and_clear();
    if a.server.json {
        return emit_json(serde_json::to_value(&report)?);
    }
    let known = if report.size == 0 {
        100.0
    } else {
        (report.size - report.new_bytes) as f64 * 100.0 / report.size as f64
    };
    crate::output::emit(&format!(
        "{}  {}\n{}, {} chunks, {} new ({known:.1}% already stored), {} sent\n",
        report.id,
        name,
        output::bytes(report.size),
        output::count(report.chunks),
        output::bytes(report.new_bytes),
        output::bytes(report.bytes_sent),
    ))
}

pub fn pull(local: Option<&Path>, a: &PullArgs) -> Result<()> {
    init_logs("warn");
    let store = match local {
        Some(root) if root.exists() => match LocalStore::open_existing(root) {
            Ok(s) => Some(Arc::new(s) as Arc<dyn ChunkStore>),
            // Often the very store a local `hoard serve` is serving: pull without it.
            Err(e @ hoard::Error::Locked(_)) => {
                eprintln!("hoard: note: not reusing chunks from the local store: {e}");
                None
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open local store {}", root.display()));
            }
        },
        _ => None,
    };
    let bars = Arc::new(PullBar(output::bar(None, "pulling")));
    let c = Client::new(&a.server.server, a.server.token.clone())?;
    let opts = PullOptions {
        seed: a.seed.clone(),
        store,
    };
    let report = runtime()?
        .block_on(client::pull(&c, &a.file, &a.out, opts, bars.clone()))
        .with_context(|| format!("cannot pull {} from {}", a.file, a.server.server))?;
    bars.0.finish_and_clear();
    if a.server.json {
        let mut v = serde_json::to_value(&report)?;
        v["out"] = json!(a.out);
        return emit_json(v);
    }
    crate::output::emit(&format!(
        "{}  {}\n{}, {} chunks, {} reused locally, {} downloaded ({} received)\n",
        report.id,
        a.out.display(),
        output::bytes(report.size),
        output::count(report.chunks),
        output::count(report.reused_chunks),
        output::bytes(report.downloaded_bytes),
        output::bytes(report.bytes_received),
    ))
}
