//! Upload sessions over HTTP: open from a manifest, watch progress, complete, abort.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::body::is_binary;
use super::chunks::{ids_response, read_body};
use super::error::ApiError;
use super::hooks::Event;
use super::{AppState, Principal, blocking};
use crate::error::Error;
use crate::namespace::Namespace;
use crate::upload::session::{Hide, Progress, SessionId, unnamed};
use crate::wire::{FlatManifest, ManifestReader};

/// The JSON body of `POST /v1/uploads`: the manifest and the name it is to get.
#[derive(Deserialize)]
pub struct OpenRequest {
    name: Option<String>,
    #[serde(flatten)]
    manifest: FlatManifest,
}

/// Query of `POST /v1/uploads` with a binary manifest.
#[derive(Deserialize)]
pub struct NameQuery {
    name: Option<String>,
}

/// `POST /v1/uploads`: opens a session. JSON in, JSON out (with the missing ids); a binary
/// manifest in gives the missing ids packed, the session in headers.
pub async fn open(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<NameQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::room_for_upload(&st, crate::store::UploadKind::Session).await?;
    let binary = is_binary(&headers);
    let max_chunk = st.limits().max_chunk;
    // Where not every file is reachable by id, an unnamed file would be reachable by nobody.
    let needs_name = !st.view(&who).every_file;
    let (progress, missing) = if binary {
        if needs_name && q.name.is_none() {
            return Err(ApiError::Lib(unnamed(&who.ns)));
        }
        open_streamed(&st, who.ns.clone(), st.session_hide(&who), q.name, body).await?
    } else {
        // Parsed, a JSON manifest's refs, pages and missing list take about twice its text.
        let (body, _held) = read_body(&st, body, "manifest", st.limits().max_body, 3).await?;
        let (state, ns, hide) = (st.clone(), who.ns.clone(), st.session_hide(&who));
        blocking(move || {
            let r: OpenRequest = serde_json::from_slice(&body).map_err(|e| Error::Malformed {
                what: "manifest",
                detail: e.to_string(),
            })?;
            let name = r.name.or(q.name);
            if needs_name && name.is_none() {
                return Err(unnamed(&ns));
            }
            state
                .0
                .sessions
                .open_in(&ns, hide, name.as_deref(), &r.manifest, max_chunk)
        })
        .await?
    };
    st.0.hooks.emit(event("upload.start", &progress));
    let location = format!("/v1/uploads/{}", progress.id);
    let mut resp = if binary {
        let mut r = ids_response(true, &missing);
        let h = r.headers_mut();
        for (k, v) in [
            ("hoard-session", progress.id.clone()),
            ("hoard-missing-chunks", progress.missing_chunks.to_string()),
            ("hoard-missing-bytes", progress.missing_bytes.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        r
    } else {
        let mut v =
            serde_json::to_value(&progress).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["missing"] = json!(missing);
        Json(v).into_response()
    };
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Opens a session from a binary manifest as it streams in: the server starts hashing the
/// file's stored chunks on the first refs, while the client is still reading its file.
async fn open_streamed(
    st: &AppState,
    ns: Namespace,
    mut hide: Option<Hide>,
    name: Option<String>,
    body: Body,
) -> Result<(crate::upload::session::Progress, Vec<crate::hash::Hash>), ApiError> {
    let limit = st.limits().max_body;
    let max_chunk = st.limits().max_chunk;
    // A binary manifest is 36 bytes a chunk. Opening one once kept every ref, a copy for the
    // background hash and a lookup set, about twelve times the body (1.86 M refs, a 67 MB
    // body, peaked at ~780 MB); it now keeps only the missing refs (four such openings in a
    // row peaked the whole server at 479 MiB), and twelve times stays the (generous) share
    // reserved from the
    // memory budget (at most all of it: one request at the cap runs alone). With a declared
    // length, all at once (requests never hold part of the budget while waiting for more);
    // without one, piece by piece as it arrives (a push streams its manifest for as long as
    // it reads its file: nothing is held for what has not come yet).
    let mut held = Vec::new();
    // What this request may still reserve as pieces arrive.
    let mut room = super::MEMORY_BUDGET_KIB as u64 * 1024;
    if let Some(n) = http_body::Body::size_hint(&body).exact() {
        held.push(st.reserve(n.min(limit as u64).saturating_mul(12)).await?);
        room = 0;
    }
    // The opening lives on one blocking thread; the body's pieces are handed to it.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
    let state = st.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let mut reader = ManifestReader::default();
        let mut opening = None;
        for piece in rx {
            let refs = reader.push(&piece)?;
            if opening.is_none()
                && let Some(c) = reader.chunker()
            {
                opening = Some(state.0.sessions.begin_hiding(
                    &ns,
                    hide.take(),
                    name.as_deref(),
                    Some(c),
                    max_chunk,
                )?);
            }
            if let Some(o) = opening.as_mut() {
                o.push(&refs)?;
            }
        }
        let (_, id, size) = reader.finish()?;
        match opening {
            Some(o) => o.finish(id, size),
            None => Err(Error::Malformed {
                what: "manifest",
                detail: "not a binary manifest (magic HMF1)".into(),
            }),
        }
    });
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let mut read_error = None;
    loop {
        match stream.try_next().await {
            Ok(Some(piece)) => {
                seen += piece.len();
                if seen > limit {
                    read_error = Some(ApiError::Lib(Error::TooLarge {
                        what: "manifest",
                        size: seen as u64,
                        limit: limit as u64,
                    }));
                    break;
                }
                let want = (piece.len() as u64 * 12).min(room);
                if want > 0 {
                    match st.reserve(want).await {
                        Ok(p) => {
                            held.push(p);
                            room -= want;
                        }
                        Err(e) => {
                            read_error = Some(e);
                            break;
                        }
                    }
                }
                let tx = tx.clone();
                // A full queue means the opening is busy storing pages: wait off the runtime.
                let sent = tokio::task::spawn_blocking(move || tx.send(piece).is_ok())
                    .await
                    .unwrap_or(false);
                if !sent {
                    break; // the opening failed; its error is the one to report
                }
            }
            Ok(None) => break,
            Err(e) => {
                read_error = Some(ApiError::BadRequest(format!(
                    "cannot read the manifest: {e}"
                )));
                break;
            }
        }
    }
    drop(tx);
    let opened = worker
        .await
        .map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))?;
    if let Some(e) = read_error {
        if matches!(e, ApiError::Unavailable { .. }) {
            // As `read_body`: let a client still sending see the 503.
            super::body::drain_stream(&mut stream, limit).await;
        }
        return Err(e);
    }
    opened.map_err(ApiError::Lib)
}

/// A hook event about a session.
pub(super) fn event(kind: &'static str, p: &Progress) -> Event {
    Event {
        upload: Some(p.id.clone()),
        name: p.name.clone(),
        file_id: Some(p.file_id),
        size: Some(p.size),
        new_bytes: Some(p.missing_bytes_at_open),
        bytes_sent: Some(p.bytes_sent),
        ..Event::new(kind, "session", p.state)
    }
}

fn sid(s: &str) -> Result<SessionId, ApiError> {
    s.parse::<SessionId>().map_err(|e| ApiError::Lib(e.into()))
}

/// `GET /v1/uploads/{sid}`: state and what is still missing.
pub async fn progress(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = sid(&id)?;
    let hide = st.session_hide(&who);
    let p = blocking(move || st.0.sessions.progress_hiding(id, &who.ns, hide.as_ref())).await?;
    Ok(Json(p).into_response())
}

/// `POST /v1/uploads/{sid}/complete`: 200 when the file is recorded; 409 with the missing ids.
pub async fn complete(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = sid(&id)?;
    let state = st.clone();
    let ns = who.ns.clone();
    // A namespace told only of chunks it referenced or sent completes only with those:
    // another namespace's chunks make no file of its own unless it sent them.
    let hide = st.session_hide(&who);
    let done = blocking(move || state.0.sessions.complete_hiding(id, &ns, hide.as_ref())).await;
    let (p, now_complete) = match done {
        Ok(done) => done,
        // The chunks do not make the file the manifest claims: this upload cannot complete.
        Err(ApiError::Lib(e @ Error::Rejected(_))) => {
            let state = st.clone();
            if let Ok(p) = blocking(move || state.0.sessions.progress(id, &who.ns)).await {
                let mut ev = event("upload.failure", &p);
                ev.error = Some(e.to_string());
                st.0.hooks.emit(ev);
            }
            return Err(ApiError::Lib(e));
        }
        Err(e) => return Err(e),
    };
    // Completing again answers the same, and is neither a new event nor counted again.
    if now_complete {
        st.0.hooks.emit(event("upload.complete", &p));
        st.0.metrics.upload_completed();
    }
    Ok(Json(p).into_response())
}

/// `DELETE /v1/uploads/{sid}`: aborts and forgets the session.
pub async fn abort(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = sid(&id)?;
    let state = st.clone();
    let before = blocking(move || {
        let p = state.0.sessions.progress(id, &who.ns)?;
        state.0.sessions.abort(id, &who.ns)?;
        Ok(p)
    })
    .await?;
    let mut ev = event("upload.failure", &before);
    ev.state = "aborted";
    ev.error = Some("aborted by the client".into());
    st.0.hooks.emit(ev);
    Ok(StatusCode::NO_CONTENT.into_response())
}
