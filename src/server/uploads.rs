//! Upload sessions over HTTP: open from a manifest, watch progress, complete, abort.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::chunks::{ids_response, is_binary, read_body};
use super::error::ApiError;
use super::{AppState, blocking};
use crate::error::Error;
use crate::session::SessionId;
use crate::wire::FlatManifest;

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
    Query(q): Query<NameQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, "manifest", st.limits().max_body).await?;
    let binary = is_binary(&headers);
    let max_chunk = st.limits().max_chunk;
    let state = st.clone();
    let (progress, missing) = blocking(move || {
        let (name, flat) = if binary {
            (q.name, FlatManifest::from_binary(&body)?)
        } else {
            let r: OpenRequest = serde_json::from_slice(&body).map_err(|e| Error::Malformed {
                what: "manifest",
                detail: e.to_string(),
            })?;
            (r.name.or(q.name), r.manifest)
        };
        state.0.sessions.open(name.as_deref(), &flat, max_chunk)
    })
    .await?;
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

fn sid(s: &str) -> Result<SessionId, ApiError> {
    s.parse::<SessionId>().map_err(ApiError::Lib)
}

/// `GET /v1/uploads/{sid}`: state and what is still missing.
pub async fn progress(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = sid(&id)?;
    let p = blocking(move || st.0.sessions.progress(id)).await?;
    Ok(Json(p).into_response())
}

/// `POST /v1/uploads/{sid}/complete`: 200 when the file is recorded; 409 with the missing ids.
pub async fn complete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = sid(&id)?;
    let state = st.clone();
    let p = blocking(move || state.0.sessions.complete(id)).await?;
    st.0.metrics.upload_completed();
    Ok(Json(p).into_response())
}

/// `DELETE /v1/uploads/{sid}`: aborts and forgets the session.
pub async fn abort(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = sid(&id)?;
    blocking(move || st.0.sessions.abort(id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
