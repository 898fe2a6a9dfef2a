//! tus 1.0.0 at `/v1/tus/`: core protocol with the creation, creation-with-upload,
//! termination, expiration and checksum extensions, over the store's tus uploads
//! (`crate::tus`), so existing upload clients (tus-js-client, Uppy, tuspy) get dedup too.

use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use super::body::{DRAIN_AFTER_ERROR, drain, drain_read};
use super::error::ApiError;
use super::hooks::Event;
use super::{AppState, Principal, blocking};
use crate::error::Error;
use crate::upload::session::SessionId;
use crate::upload::tus::{CHECKSUM_ALGORITHMS, Checksum, Stop, TusState, TusUploads, Upload};

/// The protocol version spoken.
const TUS_VERSION: &str = "1.0.0";
/// Extensions offered (`Tus-Extension`).
const EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
/// Media type of `PATCH` bodies.
const OFFSET_STREAM: &str = "application/offset+octet-stream";

/// Middleware for `/v1/tus/…`: every answer carries `Tus-Resumable`, errors included, and
/// every request but `OPTIONS` must speak 1.0.0 (else 412 with `Tus-Version`).
pub async fn protocol(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !(path == "/v1/tus" || path.starts_with("/v1/tus/")) {
        return next.run(req).await;
    }
    let speaks = req
        .headers()
        .get("tus-resumable")
        .is_some_and(|v| v == TUS_VERSION);
    // Only the tus requests need Tus-Resumable: GET reads a completed upload's file from a
    // plain link (a browser, Uppy's file link), OPTIONS is discovery, and any other method
    // gets the router's 405.
    let tus_request = if path == "/v1/tus" || path == "/v1/tus/" {
        req.method() == Method::POST
    } else {
        matches!(*req.method(), Method::HEAD | Method::PATCH | Method::DELETE)
    };
    let mut resp = if !tus_request || speaks {
        next.run(req).await
    } else {
        ApiError::TusVersion.into_response()
    };
    resp.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    resp
}

/// `OPTIONS /v1/tus/`: what this server offers.
pub async fn options(State(st): State<AppState>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    h.insert("tus-max-size", HeaderValue::from(st.0.tus.max_size()));
    resp
}

fn header_str<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII")))
        })
        .transpose()
}

/// A header of decimal digits only (tus: `Upload-Length: +5` is not a length).
fn header_u64(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, ApiError> {
    header_str(headers, name)?
        .map(|v| {
            super::decimal(v.trim()).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name} must be a non-negative integer in decimal digits, not {v:?}"
                ))
            })
        })
        .transpose()
}

fn upload_id(s: &str) -> Result<SessionId, ApiError> {
    s.parse::<SessionId>().map_err(|e| ApiError::Lib(e.into()))
}

/// Headers every answer about an upload carries.
fn describe(resp: &mut Response, up: &Upload, st: &AppState) {
    let h = resp.headers_mut();
    h.insert("upload-offset", HeaderValue::from(up.offset()));
    h.insert("upload-length", HeaderValue::from(up.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if up.state == TusState::Uploading {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(up.expires(st.0.tus.ttl()));
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            h.insert("upload-expires", v);
        }
    }
    if let Some(id) = up.file_id
        && let Ok(v) = HeaderValue::from_str(&id.to_hex())
    {
        h.insert("hoard-file-id", v);
    }
}

fn event(kind: &'static str, up: &Upload) -> Event {
    let state = match up.state {
        TusState::Uploading => "uploading",
        TusState::Complete => "complete",
    };
    Event {
        upload: Some(up.id.to_string()),
        name: up.name().map(str::to_owned),
        file_id: up.file_id,
        size: Some(up.length),
        new_bytes: Some(up.new_bytes),
        bytes_sent: Some(up.received),
        ..Event::new(kind, "tus", state)
    }
}

/// `POST /v1/tus/`: creates an upload (`Upload-Length`, optional `Upload-Metadata`); with a
/// body of `application/offset+octet-stream`, appends it at once (creation-with-upload).
pub async fn create(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    for (name, what) in [
        (
            "upload-defer-length",
            "Upload-Defer-Length is not supported: send Upload-Length",
        ),
        (
            "upload-concat",
            "concatenation is not supported: upload the file in one upload",
        ),
    ] {
        if headers.contains_key(name) {
            return Err(ApiError::BadRequest(what.into()));
        }
    }
    let length = header_u64(&headers, "upload-length")?
        .ok_or_else(|| ApiError::BadRequest("creating an upload needs Upload-Length".into()))?;
    let metadata = header_str(&headers, "upload-metadata")?.map(str::to_owned);
    let checksum = checksum_of(&headers)?;
    let with_body = is_offset_stream(&headers);
    super::room_for_upload(&st, crate::store::UploadKind::Tus).await?;
    let state = st.clone();
    // Where not every file is reachable by id, an unnamed file would be reachable by nobody.
    let needs_name = !st.view(&who).every_file;
    let ns = who.ns.clone();
    let up = blocking(move || {
        state
            .0
            .tus
            .create(&ns, needs_name, length, metadata.as_deref())
    })
    .await?;
    tracing::info!(upload = %up.id, length, name = ?up.name(), "tus upload created");
    st.0.hooks.emit(event("upload.start", &up));
    let id = up.id;
    let location = HeaderValue::from_str(&format!("/v1/tus/{id}"))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let up = if with_body || length == 0 {
        match append(&st, &who, id, 0, &headers, body, checksum).await {
            Ok(up) => up,
            Err(e) => {
                // The upload exists: say where, so the client can resume it.
                let mut resp = e.into_response();
                resp.headers_mut().insert(header::LOCATION, location);
                return Ok(resp);
            }
        }
    } else {
        up
    };
    let mut resp = StatusCode::CREATED.into_response();
    describe(&mut resp, &up, &st);
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == OFFSET_STREAM)
}

fn checksum_of(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    Ok(header_str(headers, "upload-checksum")?
        .map(Checksum::parse)
        .transpose()?)
}

/// Runs `op` on upload `id` on the blocking pool, after stopping a request still writing to it
/// (which keeps what it received).
async fn stopping_others(
    st: &AppState,
    who: &Principal,
    id: &str,
    op: fn(&TusUploads, SessionId) -> crate::Result<Upload>,
) -> Result<Upload, ApiError> {
    let id = upload_id(id)?;
    let state = st.clone();
    let ns = who.ns.clone();
    blocking(move || {
        state.0.tus.check_owner(id, &ns)?;
        state.0.tus.preempt(id);
        op(&state.0.tus, id)
    })
    .await
}

/// `HEAD /v1/tus/{id}`: where the upload stands. A request still writing to it (a client
/// that lost its connection and came back) is stopped first, keeping what it received.
pub async fn head(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let up = stopping_others(&st, &who, &id, TusUploads::info).await?;
    let mut resp = StatusCode::OK.into_response();
    describe(&mut resp, &up, &st);
    // A completed upload's URL is also its file's (GET serves it): say what a GET returns.
    if let (TusState::Complete, Some(file)) = (up.state, up.file_id) {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(up.length));
        if let Ok(v) = HeaderValue::from_str(&format!("\"{file}\"")) {
            h.insert(header::ETAG, v);
        }
    }
    if let Some(m) = &up.metadata
        && let Ok(v) = HeaderValue::from_str(m)
    {
        resp.headers_mut().insert("upload-metadata", v);
    }
    Ok(resp)
}

/// `GET /v1/tus/{id}`: the file of a completed upload (as `GET /v1/files/{id}`, `Range`
/// included), which is the link tus clients such as Uppy show; 409 while it is unfinished.
pub async fn download(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = upload_id(&id)?;
    let state = st.clone();
    let ns = who.ns.clone();
    let up = blocking(move || {
        state.0.tus.check_owner(id, &ns)?;
        state.0.tus.info(id)
    })
    .await?;
    match (up.state, up.file_id) {
        (TusState::Complete, Some(file)) => {
            let file = Path(file.to_hex());
            super::files::download(State(st), Extension(who), Method::GET, file, headers).await
        }
        _ => Err(ApiError::NotComplete(format!(
            "upload {id} is at offset {} of {}: its file exists once the last byte arrives",
            up.offset(),
            up.length
        ))),
    }
}

/// `PATCH /v1/tus/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let parsed = (|| {
        let id = upload_id(&id)?;
        if !is_offset_stream(&headers) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "a PATCH body must be {OFFSET_STREAM}"
            )));
        }
        let offset = header_u64(&headers, "upload-offset")?
            .ok_or_else(|| ApiError::BadRequest("a PATCH needs Upload-Offset".into()))?;
        Ok((id, offset, checksum_of(&headers)?))
    })();
    let (id, offset, checksum) = match parsed {
        Ok(p) => p,
        Err(e) => {
            // Answered at once; the body is read and dropped meanwhile, so a client still
            // sending sees the answer rather than a reset connection.
            tokio::spawn(drain(body, DRAIN_AFTER_ERROR as usize));
            return Err(e);
        }
    };
    let up = append(&st, &who, id, offset, &headers, body, checksum).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    describe(&mut resp, &up, &st);
    Ok(resp)
}

/// Streams `body` into upload `id` on the blocking pool. Everything after the body is read
/// (the completion hook, the metrics) happens there too, so it happens even if the client
/// goes away and the request is dropped. A body that stops early (client gone, idle timeout,
/// or stopped by a newer request on the same upload) is not an error: what arrived is kept,
/// and the answer says where the upload stands.
async fn append(
    st: &AppState,
    who: &Principal,
    id: SessionId,
    offset: u64,
    headers: &HeaderMap,
    body: Body,
    checksum: Option<Checksum>,
) -> Result<Upload, ApiError> {
    let declared = header_u64(headers, header::CONTENT_LENGTH.as_str())?;
    // Another namespace's upload answers as an unknown one, before anything disturbs it.
    let (state, ns) = (st.clone(), who.ns.clone());
    if let Err(e) = blocking(move || state.0.tus.check_owner(id, &ns)).await {
        tokio::spawn(drain(body, DRAIN_AFTER_ERROR as usize));
        return Err(e);
    }
    // A request still writing to this upload lets go (keeping what it received), also before
    // waiting for a slot, which a stalled request may be holding.
    st.0.tus.preempt(id);
    // Bodies being cut at once share the whole-file uploads' slots: bounded memory.
    let slot = st.ingest_slot().await?;
    let stop = CancellationToken::new();
    let stream = body
        .into_data_stream()
        .take_until(Box::pin(stop.clone().cancelled_owned()))
        .map_err(std::io::Error::other);
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    let state = st.clone();
    // A namespace told only of chunks it referenced or sent: a completed upload's it sent.
    let private = st.private_chunks(who);
    let appended = blocking(move || {
        let _slot = slot;
        let tus = &state.0.tus;
        tus.preempt(id); // (one may have started while this request waited for its slot)
        if let Some(n) = declared {
            // Refuse a body that cannot fit before reading any of it.
            let up = tus.info(id)?;
            if offset.saturating_add(n) > up.length && offset == up.offset() {
                // Read and dropped before the answer, so a client still sending sees it.
                drain_read(&mut reader);
                return Err(Error::TooLarge {
                    what: "PATCH body (past Upload-Length)",
                    size: offset.saturating_add(n),
                    limit: up.length,
                });
            }
        }
        let stopper: Stop = Box::new(move || stop.cancel());
        let appended = tus.append(
            id,
            offset,
            &mut reader,
            checksum,
            &state.0.sink,
            Some(stopper),
        )?;
        let up = &appended.upload;
        if appended.completed {
            tracing::info!(upload = %id, file = ?up.file_id, name = ?up.name(),
                new_bytes = up.new_bytes, received = up.received, "tus upload complete");
            state.0.metrics.file_stored(up.length, up.new_bytes);
            state.0.hooks.emit(event("upload.complete", up));
            if let (Some(ns), Some(file)) = (&private, up.file_id) {
                let store = state.store();
                if let Some(m) = store.get_manifest(&file)? {
                    let refs = super::known::refs_of(&*store, &m)?;
                    state.learn(ns, refs.iter().map(|r| (r.id, r.len)).collect())?;
                }
            }
        }
        if let Some(e) = &appended.cut_off {
            tracing::info!(upload = %id, offset = up.offset(), error = %e,
                "tus PATCH stopped before its end; what arrived is kept");
        }
        Ok(appended.upload)
    })
    .await?;
    Ok(appended)
}

/// `DELETE /v1/tus/{id}`: terminates the upload.
pub async fn terminate(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let up = stopping_others(&st, &who, &id, TusUploads::terminate).await?;
    // Terminating a completed upload only forgets the record: the file stays.
    if up.state == TusState::Uploading {
        let mut ev = event("upload.failure", &up);
        ev.state = "terminated";
        ev.error = Some("terminated by the client".into());
        st.0.hooks.emit(ev);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Expiry events for the uploads a sweep forgot.
pub fn expired(st: &AppState, gone: &[Upload]) {
    for up in gone {
        tracing::info!(upload = %up.id, offset = up.offset(), "tus upload expired");
        let mut ev = event("upload.expiry", up);
        ev.state = "expired";
        st.0.hooks.emit(ev);
    }
}
