//! `/metrics` in the Prometheus text format (prometheus-client), and the middleware that
//! counts requests.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::{AppState, blocking};
use crate::upload::sink::SinkReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// The server's counters, and the registry that prints them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    chunks_received: Counter,
    chunk_bytes_received: Counter,
    chunks_new: Counter,
    chunk_bytes_new: Counter,
    file_bytes_received: Counter,
    bytes_served: Counter,
    uploads_completed: Counter,
    gc_runs: Counter,
    gc_skipped: Counter,
    store_chunks: Gauge,
    store_unique_bytes: Gauge,
    store_stored_bytes: Gauge,
    id_replica_ids: Gauge,
    /// When the pack bytes were last measured (a bucket store lists its objects for it).
    stored_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a scrape measures the pack bytes again; between, the gauge keeps its value.
const STORED_BYTES_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("hoard"),
            requests: Family::default(),
            chunks_received: Counter::default(),
            chunk_bytes_received: Counter::default(),
            chunks_new: Counter::default(),
            chunk_bytes_new: Counter::default(),
            file_bytes_received: Counter::default(),
            bytes_served: Counter::default(),
            uploads_completed: Counter::default(),
            gc_runs: Counter::default(),
            gc_skipped: Counter::default(),
            store_chunks: Gauge::default(),
            store_unique_bytes: Gauge::default(),
            store_stored_bytes: Gauge::default(),
            id_replica_ids: Gauge::default(),
            stored_at: std::sync::Mutex::new(None),
        };
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "HTTP requests answered",
            m.requests.clone(),
        );
        r.register(
            "chunks_received",
            "Chunks received in uploads",
            m.chunks_received.clone(),
        );
        r.register(
            "chunk_bytes_received",
            "Uncompressed bytes of chunks received in uploads",
            m.chunk_bytes_received.clone(),
        );
        r.register(
            "chunks_new",
            "Chunks uploads added to the store",
            m.chunks_new.clone(),
        );
        r.register(
            "chunk_bytes_new",
            "Uncompressed bytes of chunks uploads added to the store",
            m.chunk_bytes_new.clone(),
        );
        r.register(
            "file_bytes_received",
            "Bytes of whole files received by PUT /v1/files",
            m.file_bytes_received.clone(),
        );
        r.register(
            "bytes_served",
            "File and chunk bytes sent",
            m.bytes_served.clone(),
        );
        r.register(
            "uploads_completed",
            "Upload sessions completed",
            m.uploads_completed.clone(),
        );
        r.register(
            "gc_runs",
            "gc runs this server did (periodic and asked for)",
            m.gc_runs.clone(),
        );
        r.register(
            "gc_skipped",
            "Periodic gc runs skipped: another process ran gc or fsck, or finished a gc within the interval",
            m.gc_skipped.clone(),
        );
        r.register(
            "store_chunks",
            "Distinct chunks in the store",
            m.store_chunks.clone(),
        );
        r.register(
            "store_unique_bytes",
            "Uncompressed bytes of the distinct chunks",
            m.store_unique_bytes.clone(),
        );
        r.register(
            "store_stored_bytes",
            "Bytes of pack files (or objects), measured at most once a minute",
            m.store_stored_bytes.clone(),
        );
        r.register(
            "id_replica_ids",
            "Chunk ids in this server's replica of a bucket store's index (0 while it is built, or without one)",
            m.id_replica_ids.clone(),
        );
        m
    }
}

impl Metrics {
    pub(super) fn chunks_received(&self, n: u64, bytes: u64, report: SinkReport) {
        self.chunks_received.inc_by(n);
        self.chunk_bytes_received.inc_by(bytes);
        self.chunks_new.inc_by(report.new_chunks);
        self.chunk_bytes_new.inc_by(report.new_bytes);
    }

    pub(super) fn file_stored(&self, size: u64, new_bytes: u64) {
        self.file_bytes_received.inc_by(size);
        self.chunk_bytes_new.inc_by(new_bytes);
    }

    pub(super) fn bytes_served(&self, n: u64) {
        self.bytes_served.inc_by(n);
    }

    pub(super) fn gc_ran(&self, ran: bool) {
        if ran {
            self.gc_runs.inc();
        } else {
            self.gc_skipped.inc();
        }
    }

    pub(super) fn upload_completed(&self) {
        self.uploads_completed.inc();
    }
}

/// The method's name if it is one the API uses, else `other`.
fn known_method(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts every request by method, route and status.
pub async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // Labels take only bounded values: a made-up method, or a path no route matches, must
    // not create a new series (each costs memory for good, and every scrape).
    let method = known_method(req.method()).to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let labels = RequestLabels {
        method,
        route,
        status: resp.status().as_u16(),
    };
    st.0.metrics.requests.get_or_create(&labels).inc();
    resp
}

/// `GET /metrics`.
pub async fn render(State(st): State<AppState>) -> Result<Response, ApiError> {
    // The store-wide gauges cost no scan: the totals are kept as the store changes (a
    // directory store's index walk is the exception), the pack bytes are measured now and then.
    let m = &st.0.metrics;
    let measure = {
        let mut at = crate::lock(&m.stored_at);
        let due = at.is_none_or(|t| t.elapsed() >= STORED_BYTES_EVERY);
        if due {
            *at = Some(std::time::Instant::now());
        }
        due
    };
    let store = st.store();
    let (totals, stored, replica) = blocking(move || {
        let stored = if measure {
            Some(store.chunk_data_bytes()?)
        } else {
            None
        };
        Ok((store.chunk_totals()?, stored, store.id_replica_len()))
    })
    .await?;
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    m.store_chunks.set(clamp(totals.chunks));
    m.store_unique_bytes.set(clamp(totals.raw_bytes));
    if let Some(stored) = stored {
        m.store_stored_bytes.set(clamp(stored));
    }
    m.id_replica_ids.set(clamp(replica.unwrap_or(0) as u64));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
