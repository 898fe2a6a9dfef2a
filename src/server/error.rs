//! The one place that turns errors into HTTP responses.
//!
//! Every handler returns `Result<_, ApiError>`; this file alone decides the status. Bodies are
//! `{"error": "<code>", "message": "..."}`; a 5xx says only "internal error" and the detail
//! goes to the log (with the chunk id, for a corrupt chunk), never to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// tus's "460 Checksum Mismatch".
const CHECKSUM_MISMATCH: StatusCode = match StatusCode::from_u16(460) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// An error as the API reports it.
#[derive(Debug)]
pub enum ApiError {
    /// A library error: its variant picks the status.
    Lib(Error),
    /// No token, or one the server does not know.
    Unauthorized,
    /// A read token used for a write.
    Forbidden,
    /// A `Range` that starts past the end of a file of this length.
    RangeNotSatisfiable(u64),
    /// A request that does not make sense at the HTTP level (bad header, bad query).
    BadRequest(String),
    /// A worker task died (a panic): a bug, reported as 500.
    Internal(String),
    /// A tus request without `Tus-Resumable: 1.0.0`.
    TusVersion,
    /// Asked for the result of something not finished (a tus upload's file).
    NotComplete(String),
    /// The server is at a limit right now (slots, open uploads): 503 with `Retry-After`.
    Unavailable {
        /// What is full, in words.
        what: &'static str,
        /// Seconds after which trying again makes sense.
        retry_after: u64,
    },
    /// A body of the wrong `Content-Type` (a tus `PATCH` needs `application/offset+octet-stream`).
    UnsupportedMediaType(String),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Lib(e)
    }
}

impl ApiError {
    /// The status and the error code the API uses for this error.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::TusVersion => (StatusCode::PRECONDITION_FAILED, "tus_version"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::NotComplete(_) => (StatusCode::CONFLICT, "not_complete"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Lib(e) => lib_status(e),
        }
    }

    /// What went wrong, in words (the whole detail, also for 5xx: for logs and hooks).
    pub fn message(&self) -> String {
        match self {
            ApiError::Lib(e) => crate::error::chain(e),
            ApiError::Unauthorized => {
                "this request needs a token: send `Authorization: Bearer TOKEN`".to_owned()
            }
            ApiError::Forbidden => "this token may only read; writing needs a write token".into(),
            ApiError::RangeNotSatisfiable(len) => {
                format!("the range starts past the end of the file ({len} bytes)")
            }
            ApiError::BadRequest(m)
            | ApiError::Internal(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::NotComplete(m) => m.clone(),
            ApiError::TusVersion => {
                "this endpoint speaks tus 1.0.0: send `Tus-Resumable: 1.0.0`".to_owned()
            }
            ApiError::Unavailable { what, retry_after } => {
                format!("{what}; try again in {retry_after} s")
            }
        }
    }
}

/// The status and code of a library error: the one map from errors to statuses.
fn lib_status(e: &Error) -> (StatusCode, &'static str) {
    if e.is_no_space() {
        return (StatusCode::INSUFFICIENT_STORAGE, "no_space");
    }
    match e {
        // A refused frame of a batch answers as its cause.
        Error::BadFrame { source, .. } => lib_status(source),
        // The request body stopped before its end: the request's fault, not the store's.
        Error::Input(_)
        | Error::Malformed { .. }
        | Error::InvalidName { .. }
        | Error::InvalidParams(_)
        | Error::Ambiguous { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        Error::NotFound(_)
        | Error::NoSuchVersion { .. }
        | Error::ChunkNotFound(_)
        | Error::NoSession(_)
        | Error::NotAnUploadId(_) => (StatusCode::NOT_FOUND, "not_found"),
        Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        // A manifest that gives a stored chunk another length is a malformed manifest; one
        // whose chunks make another file claims the wrong id.
        Error::Rejected(inner) if matches!(**inner, Error::LengthMismatch { .. }) => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        Error::HashMismatch { .. } | Error::Rejected(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "hash_mismatch")
        }
        Error::Incomplete { .. } => (StatusCode::CONFLICT, "incomplete"),
        Error::SessionEnded { .. } => (StatusCode::GONE, "session_ended"),
        Error::OffsetMismatch { .. } => (StatusCode::CONFLICT, "offset_mismatch"),
        Error::UploadBusy(_) => (StatusCode::LOCKED, "busy"),
        Error::Engine {
            unreachable: true, ..
        } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        // Another version has changed the index's schema under this server: it must not
        // serve (a load balancer takes it out) until it is replaced by that version.
        Error::Version { .. } => (StatusCode::SERVICE_UNAVAILABLE, "other_version"),
        Error::GcRefused { .. } | Error::IndexBehindJournal { .. } => {
            (StatusCode::CONFLICT, "store_disagrees")
        }
        // tus's checksum extension defines 460 for this.
        Error::ChecksumMismatch { .. } => (CHECKSUM_MISMATCH, "checksum_mismatch"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// Seconds a client is asked to wait after a bucket or database did not answer.
const ENGINE_RETRY_AFTER: u32 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        // Those two say what to do and name nothing private.
        let told = matches!(
            self,
            ApiError::Unavailable { .. } | ApiError::Lib(Error::Version { .. })
        );
        if status.is_server_error() && !told {
            // The detail (paths among it) goes to the log only.
            match &self {
                ApiError::Lib(e) => {
                    tracing::error!(error = %crate::error::chain(e), "request failed")
                }
                other => tracing::error!(error = ?other, "request failed"),
            }
            let message = match status {
                StatusCode::INSUFFICIENT_STORAGE => {
                    "the server's disk is full; nothing of this request was kept: try again once the operator has freed space"
                }
                // An engine that did not answer (which one, and where, goes to the log).
                StatusCode::SERVICE_UNAVAILABLE => {
                    "the store's object store or index database did not answer; nothing of this request was kept: try again shortly"
                }
                _ => "internal error; the server log has the details",
            };
            let body = json!({ "error": code, "message": message });
            let mut resp = (status, Json(body)).into_response();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(ENGINE_RETRY_AFTER));
            }
            return resp;
        }
        let message = self.message();
        let mut body = json!({ "error": code, "message": message });
        if let ApiError::Lib(Error::Incomplete { missing }) = &self {
            body["missing"] = json!(missing);
        }
        let mut resp = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TusVersion => {
                resp.headers_mut()
                    .insert("tus-version", HeaderValue::from_static("1.0.0"));
            }
            ApiError::RangeNotSatisfiable(len) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unavailable { retry_after, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}

/// Response middleware: an error answer made outside the handlers (no route, a method a route
/// does not take, a timeout, a body-limit or extractor rejection) gets the same JSON body as
/// every other error. Bodies already JSON pass through.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // What axum's rejections say is short and useful ("Failed to parse the request body…").
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match status {
        StatusCode::NOT_FOUND => {
            "no such endpoint; the API is described at /v1/openapi.json".to_owned()
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            format!("this endpoint does not take that method (it takes: {allow})")
        }
        StatusCode::REQUEST_TIMEOUT => "the request took too long; send it again".to_owned(),
        s if s.is_server_error() => "internal error; the server log has the details".to_owned(),
        _ if !text.is_empty() => text,
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({ "error": code, "message": message });
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::upload::session::SessionId;

    /// The statuses the handlers used to pick by rewriting errors now come from this map alone.
    #[test]
    fn the_one_map_decides_what_handlers_used_to_rewrite() {
        let h = Hash::of(b"x");
        let cut = Error::Input(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(lib_status(&cut), (StatusCode::BAD_REQUEST, "bad_request"));
        let length = Error::LengthMismatch {
            id: h,
            stored: 3,
            claimed: 4,
        };
        assert_eq!(
            lib_status(&Error::Rejected(Box::new(length))),
            (StatusCode::BAD_REQUEST, "bad_request")
        );
        let file = Error::FileMismatch {
            expected: h,
            actual: Hash::of(b"y"),
        };
        assert_eq!(
            lib_status(&Error::Rejected(Box::new(file))),
            (StatusCode::UNPROCESSABLE_ENTITY, "hash_mismatch")
        );
        // The same mismatch found in a stored file is the store's damage, not the client's.
        let stored = Error::FileMismatch {
            expected: h,
            actual: Hash::of(b"y"),
        };
        assert_eq!(lib_status(&stored).0, StatusCode::INTERNAL_SERVER_ERROR);
        let id = SessionId([7; 16]);
        assert_eq!(lib_status(&Error::NoSession(id)).0, StatusCode::NOT_FOUND);
        assert_eq!(
            lib_status(&Error::NotAnUploadId("zz".into())).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(lib_status(&Error::UploadBusy(id)).0, StatusCode::LOCKED);
        let ended = Error::SessionEnded {
            id,
            state: "expired",
        };
        assert!(ended.to_string().contains(&id.to_string()));
    }
}
