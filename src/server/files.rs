//! Whole files: streamed upload (`curl -T`), streamed download with ranges, manifests,
//! listing, deletion and store totals.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::body::{drain_read, is_binary, send_within};
use super::error::ApiError;
use super::hooks::Event;
use super::{AppState, OPENAPI, Principal, blocking};
use crate::error::Error;
use crate::manifest::ChunkRef;
use crate::names;
use crate::restore;
use crate::wire::{BINARY, FlatManifest};
use crate::{ingest, listing};

/// `PUT /v1/files/{name}`: the body is the file; it is chunked as it streams and only new
/// chunks are stored. Memory stays at a few blocks whatever the size.
pub async fn upload(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    names::validate(&name)?;
    let label = name.clone();
    let slot = st.ingest_slot().await?;
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let stream = body
        .into_data_stream()
        .map_ok(move |piece| {
            counted.fetch_add(piece.len() as u64, Ordering::Relaxed);
            piece
        })
        .map_err(std::io::Error::other);
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    let state = st.clone();
    // A namespace told only of chunks it referenced or sent: this file's it sent whole.
    let private = st.private_chunks(&who);
    // Everything up to the hooks runs on the blocking pool: it finishes (and reports) even if
    // the client goes away and the request is dropped.
    let (report, version) = blocking(move || {
        let _slot = slot;
        let event = |kind, phase| Event {
            name: Some(name.clone()),
            bytes_sent: Some(received.load(Ordering::Relaxed)),
            ..Event::new(kind, "put", phase)
        };
        state.0.hooks.emit(event("upload.start", "uploading"));
        let store = state.store();
        let stored =
            ingest::ingest(&*store, &mut reader, &|_| {}).and_then(|(manifest, report)| {
                let rec = names::record_in(&*store, &who.ns, &name, &manifest)?;
                let mut report = report;
                if let Some(ns) = &private {
                    // What was new to the namespace, not to the store (which would tell it
                    // what others stored); what the store wrote is not told (0).
                    let refs = super::known::refs_of(&*store, &manifest)?;
                    let new = state.learn(ns, refs.iter().map(|r| (r.id, r.len)).collect())?;
                    report.new_chunks = new.new_chunks;
                    report.new_bytes = new.new_bytes;
                    report.stored_bytes = 0;
                }
                Ok((report, rec.versions.len()))
            });
        if stored.is_err() {
            // The store failed (a full disk) while the client still sends: read on a while,
            // so that it sees the answer rather than a connection closed under its upload.
            drain_read(&mut reader);
        }
        match &stored {
            Ok((report, _)) => {
                state.0.hooks.emit(Event {
                    file_id: Some(report.id),
                    size: Some(report.size),
                    new_bytes: Some(report.new_bytes),
                    ..event("upload.complete", "complete")
                });
                state.0.metrics.file_stored(report.size, report.new_bytes);
            }
            Err(e) => {
                let mut ev = event("upload.failure", "failed");
                ev.error = Some(e.to_string());
                state.0.hooks.emit(ev);
            }
        }
        stored
    })
    .await?;
    let mut v = serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["version"] = json!(version);
    v["name"] = json!(label);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// A `Write` that hands what it gets to an HTTP body stream.
///
/// It holds back the last piece it was given (`held`) until the caller says the whole file
/// checked out, so a whole-file mismatch can still cut the response short: a client never
/// receives every byte of a file that failed its check. A client that stops reading for
/// longer than `idle` fails the write, which frees the worker.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    held: Arc<Mutex<Option<Bytes>>>,
    idle: Duration,
    rt: tokio::runtime::Handle,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let previous = crate::lock(&self.held).replace(Bytes::copy_from_slice(buf));
        if let Some(p) = previous {
            send_within(&self.rt, &self.tx, Ok(p), self.idle)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET`/`HEAD /v1/files/{name or id}`: the file, streamed; `Range` gives 206; `ETag` is the
/// file id. Every chunk is verified on the way out, and for a whole file the file id too: on
/// a mismatch the stream is cut short, so the client never takes wrong bytes for whole.
pub async fn download(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    method: Method,
    Path(spec): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = st.store();
    let view = st.view(&who);
    let found = {
        let store = store.clone();
        blocking(move || names::resolve_in(&*store, &view, &spec)).await?
    };
    let m = found.manifest;
    let len = m.file_len;
    let etag = format!("\"{}\"", m.file_id);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let (status, start, end) = match choose_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    ) {
        RangeChoice::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeChoice::Whole => (StatusCode::OK, 0, len),
        RangeChoice::NotSatisfiable => return Err(ApiError::RangeNotSatisfiable(len)),
    };
    let partial = status == StatusCode::PARTIAL_CONTENT;
    let file_id = m.file_id;
    let mut resp = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let whole = !partial;
        let served = st.clone();
        let (rt, idle) = (tokio::runtime::Handle::current(), st.limits().idle_timeout);
        tokio::task::spawn_blocking(move || {
            let held = Arc::new(Mutex::new(None));
            let writer = ChannelWriter {
                tx: tx.clone(),
                held: held.clone(),
                idle,
                rt: rt.clone(),
            };
            let out = std::io::BufWriter::with_capacity(1 << 20, writer);
            let done = if whole {
                restore::restore(&*store, &m, out, &|_| {})
            } else {
                restore::restore_range(&*store, &m, start..end, out)
            };
            let last = crate::lock(&held).take();
            match done {
                Ok(()) => {
                    if let Some(last) = last {
                        let _ = send_within(&rt, &tx, Ok(last), idle);
                    }
                    served.0.metrics.bytes_served(end - start);
                }
                Err(Error::Output(_)) => {} // the client went away or stopped reading
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), file = %m.file_id, "download stopped");
                    let _ = send_within(
                        &rt,
                        &tx,
                        Err(std::io::Error::other("file failed verification")),
                        idle,
                    );
                }
            }
        });
        // Nothing is sent before the first piece is ready: a file that fails verification
        // there (any file of one piece: its only piece is held back until the whole file is
        // checked) gets a 500. Later failures can only cut the body short.
        let first = match rx.recv().await {
            Some(Err(_)) => {
                return Err(ApiError::Internal(format!(
                    "file {file_id} failed verification; nothing was sent"
                )));
            }
            first => first,
        };
        let rest = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Body::from_stream(futures_util::stream::iter(first).chain(rest)).into_response()
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(BINARY));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if partial && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeChoice {
    /// The whole file (no header, one that does not parse or has another unit, or several ranges).
    Whole,
    /// Bytes `start..end` (206).
    Part(u64, u64),
    /// A range that parses but lies past the end, or any range of an empty file (416).
    NotSatisfiable,
}

/// Reads a `Range` header as RFC 9110 (section 14) says. Written out rather than taken from
/// http-range-header, whose validation answers 416 where the RFC says to ignore the header
/// (`bytes=10-5`) or to serve the whole file (a suffix longer than it).
///
/// - A header that does not parse, has another unit, or holds an invalid range spec (last
///   before first) is ignored: the whole file.
/// - `bytes=A-B` serves A..=min(B, len-1); `bytes=A-` serves from A; `bytes=-N` the last N
///   bytes (the whole file if N >= len).
/// - Unsatisfiable (416): A >= len, `-0`, or any range of an empty file.
/// - Several ranges: the whole file with 200 (no multipart answers), unless every one is
///   unsatisfiable.
pub fn choose_range(header: Option<&str>, len: u64) -> RangeChoice {
    let Some(specs) = header.and_then(|h| {
        let (unit, rest) = h.trim().split_once('=')?;
        unit.trim().eq_ignore_ascii_case("bytes").then_some(rest)
    }) else {
        return RangeChoice::Whole;
    };
    let mut parts = Vec::new();
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((first, last)) = spec.split_once('-') else {
            return RangeChoice::Whole;
        };
        let num = super::decimal;
        let part = match (first.trim(), last.trim()) {
            ("", suffix) => match num(suffix) {
                Some(0) => None,
                Some(n) if len > 0 => Some((len.saturating_sub(n), len)),
                Some(_) => None,
                None => return RangeChoice::Whole,
            },
            (a, "") => match num(a) {
                Some(a) if a < len => Some((a, len)),
                Some(_) => None,
                None => return RangeChoice::Whole,
            },
            (a, b) => match (num(a), num(b)) {
                (Some(a), Some(b)) if b < a => return RangeChoice::Whole,
                (Some(a), Some(b)) if a < len => Some((a, b.saturating_add(1).min(len))),
                (Some(_), Some(_)) => None,
                _ => return RangeChoice::Whole,
            },
        };
        parts.push(part);
    }
    match parts.as_slice() {
        [] => RangeChoice::Whole,
        [Some((a, b))] => RangeChoice::Part(*a, *b),
        p if p.iter().all(Option::is_none) => RangeChoice::NotSatisfiable,
        _ => RangeChoice::Whole,
    }
}

/// True if `If-None-Match` (RFC 9110 section 13.1.2) matches `etag` (`"ID"`): `*`, or a list
/// holding it, weak (`W/"ID"`) or strong (the comparison is weak).
fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// `DELETE /v1/files/{name, name@N or id}`: as `hoard rm` (see `names::remove`); the chunks
/// stay until gc. Answers what was removed.
pub async fn remove(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(spec): Path<String>,
) -> Result<Json<names::Removed>, ApiError> {
    let store = st.store();
    let view = st.view(&who);
    Ok(Json(
        blocking(move || names::remove_in(&*store, &view, &spec)).await?,
    ))
}

/// `GET /v1/manifests/{name or id}`: the whole manifest, JSON or (with `Accept:
/// application/octet-stream`) binary.
pub async fn manifest(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(spec): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = st.store();
    let view = st.view(&who);
    let flat = blocking(move || {
        let m = names::resolve_in(&*store, &view, &spec)?.manifest;
        let mut chunks: Vec<ChunkRef> = Vec::with_capacity(m.chunk_count as usize);
        restore::for_each_page(&*store, &m, |page| {
            chunks.extend(page.chunks);
            Ok(())
        })?;
        Ok(FlatManifest {
            id: m.file_id,
            size: m.file_len,
            chunker: Some(m.chunker),
            chunks,
        })
    })
    .await?;
    let binary = headers
        .get(header::ACCEPT)
        .is_some_and(|v| v.as_bytes().starts_with(BINARY.as_bytes()))
        || is_binary(&headers);
    let etag = format!("\"{}\"", flat.id);
    let mut resp = if binary {
        let c = flat.chunker.unwrap_or_default();
        ([(header::CONTENT_TYPE, BINARY)], flat.to_binary(c)).into_response()
    } else {
        Json(flat).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// `GET /v1/files`: every name of the caller's namespace with its versions, then (for a
/// caller who may reach every file) unnamed files.
pub async fn list(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let store = st.store();
    let view = st.view(&who);
    let files = blocking(move || listing::list_in(&*store, &view)).await?;
    Ok(Json(json!({ "files": files })).into_response())
}

/// `GET /v1/stats`: logical vs stored bytes and the ratios.
pub async fn stats(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let store = st.store();
    let view = st.view(&who);
    let stats = blocking(move || listing::stats_in(&*store, &view)).await?;
    Ok(Json(stats).into_response())
}

/// `GET /v1/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /v1/config`: the store's chunker params and compression level, and the server's
/// limits, so a client cuts the same boundaries and sizes its requests to fit.
pub async fn config(State(st): State<AppState>) -> Response {
    let c = st.store().config();
    let l = st.limits();
    Json(json!({
        "chunker": crate::chunker::published(c.chunker), "level": c.level,
        "max_chunk": l.max_chunk, "max_body": l.max_body, "max_ids": l.max_ids,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::{RangeChoice as R, choose_range, none_match};

    #[test]
    fn ranges_follow_rfc_9110() {
        let c = |h: &str, len| choose_range(Some(h), len);
        assert_eq!(c("bytes=0-9", 100), R::Part(0, 10));
        assert_eq!(c("bytes=90-", 100), R::Part(90, 100));
        assert_eq!(c("bytes=90-500", 100), R::Part(90, 100));
        assert_eq!(c("bytes=-10", 100), R::Part(90, 100));
        // A suffix longer than the file is the whole file, as a 206.
        assert_eq!(c("bytes=-500", 100), R::Part(0, 100));
        // An invalid range spec makes the header ignored, not unsatisfiable.
        assert_eq!(c("bytes=10-5", 100), R::Whole);
        assert_eq!(c("bytes=x-5", 100), R::Whole);
        assert_eq!(c("items=0-5", 100), R::Whole);
        assert_eq!(c("bytes=100-", 100), R::NotSatisfiable);
        assert_eq!(c("bytes=-0", 100), R::NotSatisfiable);
        assert_eq!(c("bytes=0-5", 0), R::NotSatisfiable);
        assert_eq!(c("bytes=0-5,10-20", 100), R::Whole);
        assert_eq!(c("bytes=200-300,400-", 100), R::NotSatisfiable);
        assert_eq!(c("Bytes = 1-2", 100), R::Part(1, 3));
    }

    #[test]
    fn if_none_match_takes_weak_tags_star_and_lists() {
        let e = "\"abc\"";
        assert!(none_match("\"abc\"", e));
        assert!(none_match("W/\"abc\"", e));
        assert!(none_match("*", e));
        assert!(none_match("\"x\", W/\"abc\"", e));
        assert!(!none_match("\"abcd\"", e));
        assert!(!none_match("", e));
    }
}
