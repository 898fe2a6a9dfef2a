//! `hoard serve`: the store over HTTP (API v1). Async lives here and in `client/` only;
//! every handler hands the store work to `spawn_blocking` (the core stays synchronous).
//!
//! [`router`] builds the whole app from an [`AppState`]; [`serve`] runs it on a bound listener
//! until a shutdown future resolves, then lets in-flight requests finish and the chunk sink
//! drain before it returns.

mod auth;
mod body;
mod chunks;
mod error;
mod files;
mod hooks;
mod known;
mod listen;
mod maintenance;
mod metrics;
mod parse_errors;
mod tus;
mod uploads;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, head, post, put};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use auth::{Auth, Principal, Scope, TokensSource};
pub use error::ApiError;
pub use files::{RangeChoice, choose_range};
pub use hooks::{Event, HookConfig, Hooks};

use crate::error::{Error, Result};
use crate::gc::GcOptions;
use crate::store::{ChunkStore, UploadKind};
use crate::upload::session::Sessions;
use crate::upload::sink::ChunkSink;
use crate::upload::tus::TusUploads;

/// The OpenAPI document of API v1, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Limits on what one request may ask of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest chunk accepted, uncompressed and on the wire.
    pub max_chunk: u32,
    /// Largest body of a batched chunk upload, a manifest or an id list.
    pub max_body: usize,
    /// Most ids in one missing query or fetch.
    pub max_ids: usize,
    /// Longest a request without a streamed body may take.
    pub request_timeout: Duration,
    /// Longest a streamed body may pause between two pieces.
    pub idle_timeout: Duration,
    /// Requests served at once; more wait.
    pub concurrency: usize,
    /// An upload session idle this long expires.
    pub session_ttl: Duration,
    /// Run gc this often in the background (zero: only on `POST /v1/gc`).
    pub gc_interval: Duration,
    /// How gc runs (grace period, compaction threshold).
    pub gc: GcOptions,
    /// Largest tus upload (`Tus-Max-Size`).
    pub tus_max_size: u64,
    /// Longest a client may take to send a request's headers; also how long a kept-alive
    /// connection may sit idle between requests.
    pub header_timeout: Duration,
    /// Connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Least bytes a second a streamed body must bring, averaged over each `idle_timeout`
    /// (0: no minimum).
    pub min_body_rate: u64,
    /// After a shutdown signal, how long requests in flight may go on.
    pub shutdown_timeout: Duration,
    /// Open upload sessions, and unfinished tus uploads, each at most this many.
    pub max_uploads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chunk: 1 << 20,
            max_body: 64 << 20,
            max_ids: 1 << 20,
            request_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            concurrency: 64,
            session_ttl: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(3600),
            gc: GcOptions {
                grace: Duration::from_secs(3600),
                min_dead: crate::gc::DEFAULT_MIN_DEAD,
            },
            tus_max_size: 1 << 40,
            header_timeout: Duration::from_secs(20),
            max_connections: 1024,
            min_body_rate: 1024,
            shutdown_timeout: Duration::from_secs(30),
            max_uploads: 1000,
        }
    }
}

/// What the server offers besides the API itself.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Origins whose pages may call the API from a browser (CORS), e.g.
    /// `https://app.example.com` (`*`: any); none by default.
    pub cors_origins: Vec<String>,
    /// Where upload events go.
    pub hooks: HookConfig,
    /// Where the tokens came from, to read them again on SIGHUP (none: they stay as given).
    pub tokens: Option<TokensSource>,
}

/// Longest a request waits for a slot or its share of memory before it gets 503.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// Takes `permits` of `sem`, waiting while they are held by others but at most
/// [`SLOT_WAIT`]; then 503 with `Retry-After` saying `what` (slow clients holding every slot
/// must not hang the rest).
async fn wait_for(
    sem: &Arc<Semaphore>,
    permits: u32,
    what: &'static str,
) -> Result<OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(SLOT_WAIT, sem.clone().acquire_many_owned(permits)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(ApiError::Internal("closed".into())),
        Err(_) => Err(ApiError::Unavailable {
            what,
            retry_after: 5,
        }),
    }
}

/// Everything a handler can reach; a cheap `Clone`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    store: Arc<dyn ChunkStore>,
    sink: ChunkSink,
    sessions: Sessions,
    limits: Limits,
    /// The tokens in force; replaced whole when SIGHUP reads them again.
    auth: std::sync::RwLock<Arc<Auth>>,
    tokens: Option<TokensSource>,
    tus: TusUploads,
    /// Which chunks each namespace may be told are stored (`known.rs`).
    known: known::Known,
    hooks: Hooks,
    cors: Option<tower_http::cors::CorsLayer>,
    metrics: metrics::Metrics,
    /// Chunk-upload bodies held in memory at once: bounds the server's memory.
    upload_slots: Arc<Semaphore>,
    /// Whole-file uploads (`PUT /v1/files`) chunked at once.
    ingest_slots: Arc<Semaphore>,
    /// The memory request bodies may take together, in KiB (see [`AppState::reserve`]).
    memory: Arc<Semaphore>,
    /// When `/healthz` last found every engine answering.
    healthy_at: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Memory all request bodies held at once (and what their handlers make of them) may take:
/// 512 MiB, in KiB permits.
const MEMORY_BUDGET_KIB: usize = 512 * 1024;

impl AppState {
    /// State for serving `store` with `limits` and `auth`; starts the chunk sink thread.
    ///
    /// # Errors
    /// If the sink thread cannot start.
    pub fn new(store: Arc<dyn ChunkStore>, limits: Limits, auth: Auth) -> Result<Self> {
        Self::with_options(store, limits, auth, Options::default())
    }

    /// As [`AppState::new`], with CORS origins and webhooks.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] for an origin that is not a valid header value; if the sink
    /// thread cannot start.
    pub fn with_options(
        store: Arc<dyn ChunkStore>,
        limits: Limits,
        auth: Auth,
        options: Options,
    ) -> Result<Self> {
        let cors = cors_layer(&options.cors_origins)?;
        let sink = ChunkSink::start(store.clone())?;
        let sessions = Sessions::new(store.clone(), limits.session_ttl);
        let tus = TusUploads::new(store.clone(), limits.session_ttl, limits.tus_max_size);
        Ok(AppState(Arc::new(Shared {
            store,
            sink,
            sessions,
            limits,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            tokens: options.tokens,
            tus,
            known: known::Known::default(),
            hooks: Hooks::new(options.hooks),
            cors,
            metrics: metrics::Metrics::default(),
            upload_slots: Arc::new(Semaphore::new(4)),
            ingest_slots: Arc::new(Semaphore::new(4)),
            memory: Arc::new(Semaphore::new(MEMORY_BUDGET_KIB)),
            healthy_at: tokio::sync::Mutex::new(None),
        })))
    }

    fn store(&self) -> Arc<dyn ChunkStore> {
        self.0.store.clone()
    }

    /// One of the slots of streamed bodies being cut (`PUT /v1/files`, tus `PATCH`), so
    /// their memory stays bounded (see [`wait_for`]).
    async fn ingest_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        wait_for(
            &self.0.ingest_slots,
            1,
            "every streamed-upload slot is busy",
        )
        .await
    }

    /// One of the slots of chunk-upload bodies held in memory (see [`wait_for`]).
    async fn upload_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        wait_for(&self.0.upload_slots, 1, "every chunk-upload slot is busy").await
    }

    /// Reserves `bytes` of the server's memory budget for one request's body and what is
    /// parsed from it (at most the whole budget; see [`wait_for`]).
    async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, ApiError> {
        let kib = u32::try_from(bytes.div_ceil(1024).clamp(1, MEMORY_BUDGET_KIB as u64))
            .unwrap_or(u32::MAX);
        let what = "the memory for request bodies is taken by other requests";
        wait_for(&self.0.memory, kib, what).await
    }

    fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// What `who` sees of names and files: its namespace's names, and every file by id if it
    /// is an admin or the server has no namespace but the default one.
    fn view(&self, who: &Principal) -> crate::names::View {
        crate::names::View {
            ns: who.ns.clone(),
            every_file: who.scope == Scope::Admin || !self.auth().shared(),
        }
    }

    /// The namespace whose chunk answers must come from what it referenced or sent
    /// (`known.rs`), if `who`'s must: a namespace's token on a server with several.
    fn private_chunks(&self, who: &Principal) -> Option<crate::namespace::Namespace> {
        (!self.view(who).every_file).then(|| who.ns.clone())
    }

    /// Marks as missing, among `ids` with their `missing` flags, those namespace `ns` (if
    /// any) may not be told are stored.
    fn hide_unknown(
        &self,
        ns: Option<&crate::namespace::Namespace>,
        ids: &[crate::hash::Hash],
        missing: &mut [bool],
    ) -> Result<()> {
        if let Some(ns) = ns {
            let known = self.0.known.knows(&*self.0.store, ns, ids)?;
            for (m, k) in missing.iter_mut().zip(known) {
                *m |= !k;
            }
        }
        Ok(())
    }

    /// What an upload session of `who` must count missing besides what the store lacks: the
    /// chunks its namespace may not be told are stored (see [`AppState::private_chunks`]).
    fn session_hide(&self, who: &Principal) -> Option<crate::upload::session::Hide> {
        let ns = self.private_chunks(who)?;
        let state = self.clone();
        Some(Arc::new(
            move |ids: &[crate::hash::Hash], missing: &mut [bool]| {
                state.hide_unknown(Some(&ns), ids, missing)
            },
        ))
    }

    /// For each of `ids`, whether the store lacks it as namespace `ns` (if any) may be told:
    /// a chunk it neither referenced nor sent is missing to it.
    fn missing_for(
        &self,
        ns: Option<&crate::namespace::Namespace>,
        ids: &[crate::hash::Hash],
    ) -> Result<Vec<bool>> {
        let mut missing = self.0.store.missing(ids)?;
        self.hide_unknown(ns, ids, &mut missing)?;
        Ok(missing)
    }

    /// Notes that namespace `ns` sent `chunks` (id and length; stored, so checked against
    /// their ids by now) and returns what was new to it: what was new to the store would
    /// tell it what other namespaces stored.
    fn learn(
        &self,
        ns: &crate::namespace::Namespace,
        mut chunks: Vec<(crate::hash::Hash, u32)>,
    ) -> Result<crate::upload::sink::SinkReport> {
        chunks.sort_unstable();
        chunks.dedup_by_key(|c| c.0);
        let ids: Vec<crate::hash::Hash> = chunks.iter().map(|c| c.0).collect();
        let mut new = vec![false; ids.len()];
        self.hide_unknown(Some(ns), &ids, &mut new)?;
        self.0.known.add(&*self.0.store, ns, &ids)?;
        let fresh = chunks.iter().zip(&new).filter(|(_, n)| **n);
        Ok(crate::upload::sink::SinkReport {
            new_chunks: fresh.clone().count() as u64,
            new_bytes: fresh.map(|(c, _)| u64::from(c.1)).sum(),
        })
    }

    fn auth(&self) -> Arc<Auth> {
        self.0
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the tokens again from where they came from (SIGHUP): requests that already
    /// passed the check go on; the next ones are checked against the new tokens. Returns how
    /// many tokens are in force, or `None` for a server whose tokens were given in code.
    ///
    /// # Errors
    /// What reading them failed on; the tokens in force stay.
    pub fn reload_tokens(&self) -> Result<Option<usize>> {
        let Some(source) = &self.0.tokens else {
            return Ok(None);
        };
        let fresh = source.load()?;
        let n = fresh.token_count();
        *self
            .0
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Ok(Some(n))
    }
}

/// The CORS policy for `origins` (none: no CORS headers at all, browsers allow only the
/// server's own page). Exposes what tus clients read and what the page's API calls return.
fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/')).map_err(|_| {
                    Error::InvalidParams(format!("--cors-origin {o:?} is not a valid origin"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|n| axum::http::HeaderName::from_static(n))
            .collect::<Vec<_>>()
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "content-encoding",
                "range",
                "if-none-match",
                "tus-resumable",
                "upload-length",
                "upload-offset",
                "upload-metadata",
                "upload-checksum",
                "upload-defer-length",
                "x-requested-with",
            ]))
            .expose_headers(names(&[
                "location",
                "upload-offset",
                "upload-length",
                "upload-metadata",
                "upload-expires",
                "tus-resumable",
                "tus-version",
                "tus-max-size",
                "tus-extension",
                "tus-checksum-algorithm",
                "content-range",
                "etag",
                "hoard-file-id",
                "hoard-session",
                "hoard-missing-chunks",
                "hoard-missing-bytes",
            ]))
            .max_age(Duration::from_secs(3600)),
    ))
}

/// Refuses a new upload (503 with `Retry-After`) while `--max-uploads` of that kind are open:
/// each holds a record and pins chunks until it ends or expires. Counted from the records,
/// so uploads opened before a restart count too.
async fn room_for_upload(st: &AppState, kind: UploadKind) -> Result<(), ApiError> {
    let store = st.store();
    let open = blocking(move || crate::upload::open_count(&*store, kind)).await?;
    if open >= st.limits().max_uploads {
        return Err(ApiError::Unavailable {
            what: match kind {
                UploadKind::Tus => {
                    "the server holds as many unfinished tus uploads as it takes (--max-uploads)"
                }
                _ => "the server holds as many open upload sessions as it takes (--max-uploads)",
            },
            retry_after: 60,
        });
    }
    Ok(())
}

/// A non-negative integer in decimal digits only, as HTTP headers write them (`+5`, ` 5`
/// inside, `0x10` and the empty string are not).
fn decimal(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Runs `f` on the blocking pool: store work never runs on the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::Lib),
        Err(e) => Err(ApiError::Internal(format!("worker task failed: {e}"))),
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limits = state.limits().clone();
    // Requests whose bodies are small or bounded: a deadline for the whole request.
    let bounded = Router::new()
        .route("/v1/chunks/missing", post(chunks::missing))
        .route("/v1/chunks", post(chunks::upload_batch))
        .route(
            "/v1/chunks/{id}",
            put(chunks::upload_one).get(chunks::download_one),
        )
        .route(
            "/v1/uploads/{sid}",
            get(uploads::progress).delete(uploads::abort),
        )
        .route("/v1/manifests/{*spec}", get(files::manifest))
        .route("/v1/files", get(files::list))
        .route("/v1/stats", get(files::stats))
        .route("/v1/config", get(files::config))
        .route("/v1/openapi.json", get(files::openapi))
        .route("/", get(web::index))
        .route("/{file}", get(web::asset))
        .route("/metrics", get(metrics::render))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    // Streams of any length (a manifest streamed while the client reads a huge file, the
    // whole-file check of a completion): only an idle timeout between pieces of the body.
    let streaming = Router::new()
        .route("/v1/uploads", post(uploads::open))
        .route("/v1/uploads/{sid}/complete", post(uploads::complete))
        .route(
            "/v1/files/{*name}",
            get(files::download)
                .put(files::upload)
                .delete(files::remove),
        )
        .route("/v1/chunks/fetch", post(chunks::fetch))
        // tus: PATCH bodies stream for as long as the file is.
        .route("/v1/tus", post(tus::create).options(tus::options))
        .route("/v1/tus/", post(tus::create).options(tus::options))
        .route(
            "/v1/tus/{id}",
            head(tus::head)
                .get(tus::download)
                .patch(tus::patch)
                .delete(tus::terminate)
                .options(tus::options),
        )
        // Maintenance runs as long as the store is large.
        .route("/v1/gc", post(maintenance::gc_now))
        .route("/v1/fsck", post(maintenance::fsck_now));
    let cors = state.0.cors.clone();
    let app = bounded
        .merge(streaming)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Outside auth, so a 401 to a tus client carries Tus-Resumable too.
        .layer(axum::middleware::from_fn(tus::protocol))
        .layer(axum::middleware::from_fn(listen::encodings))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            listen::min_rate,
        ))
        .layer(RequestBodyTimeoutLayer::new(limits.idle_timeout))
        .layer(DefaultBodyLimit::disable())
        .layer(GlobalConcurrencyLimitLayer::new(limits.concurrency))
        // Outside the concurrency limit: a health check answers while slow clients hold
        // every request slot.
        .merge(Router::new().route("/healthz", get(maintenance::healthz)))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state);
    // Outermost, so every answer (errors, 401s, timeouts) carries the CORS headers.
    match cors {
        Some(c) => app.layer(c),
        None => app,
    }
}

/// Refuses to serve without tokens on an address other hosts can reach, unless told to.
///
/// # Errors
/// [`Error::InvalidParams`] explaining what to pass.
pub fn check_exposure(addr: SocketAddr, auth: &Auth, insecure_no_auth: bool) -> Result<()> {
    if auth.is_open() && !addr.ip().is_loopback() && !insecure_no_auth {
        return Err(Error::InvalidParams(format!(
            "refusing to listen on {addr} without tokens: pass --token (or --tokens-file), \
             or --insecure-no-auth to let anyone who can reach it read and write"
        )));
    }
    Ok(())
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting, finishes
/// in-flight requests, expires nothing more, and waits for the chunk sink to drain.
///
/// # Errors
/// If the listener fails.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = tokio::spawn(maintenance::sweep_sessions(state.clone()));
    let collector = tokio::spawn(maintenance::collect_garbage(state.clone()));
    let hooks = tokio::spawn(state.0.hooks.clone().deliver());
    let reloader = tokio::spawn(reload_on_hangup(state.clone()));
    let app = router(state.clone());
    let served = listen::accept_loop(listener, app, state.limits(), shutdown).await;
    sweeper.abort();
    collector.abort();
    reloader.abort();
    let _ = sweeper.await;
    let _ = collector.await;
    // Events queued before the shutdown get a moment to go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while state.0.hooks.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    hooks.abort();
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.0.sessions.stop_verifiers()).await;
    // Dropping the last handle joins the sink thread after its queue is empty.
    tokio::task::spawn_blocking(move || drop(state)).await.ok();
    served
}

/// Reads the tokens again at each SIGHUP, without dropping a connection; a tokens file that
/// does not read keeps the tokens in force (logged).
async fn reload_on_hangup(state: AppState) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let st = state.clone();
            match tokio::task::spawn_blocking(move || st.reload_tokens()).await {
                Ok(Ok(Some(n))) => tracing::info!(tokens = n, "tokens read again (SIGHUP)"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "SIGHUP: cannot read the tokens again; the ones in force stay: fix the \
                     file and send SIGHUP again"
                ),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reading the tokens failed"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
