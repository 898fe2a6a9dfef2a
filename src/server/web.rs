//! The browser page at `/`: files from `web/`, embedded in the binary at build time (no
//! Node.js, no build step). The page holds no data; it calls the API with the user's token.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every file of the page: (path, media type, contents).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "worker.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/worker.js"),
    ),
    (
        "fastcdc.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/fastcdc.js"),
    ),
    (
        "blake3.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/blake3.js"),
    ),
];

/// Returns true if and only if `path` is one of the page's files (served without a token).
pub fn is_asset(path: &str) -> bool {
    path == "/"
        || ASSETS
            .iter()
            .any(|(p, _, _)| path.strip_prefix('/') == Some(p))
}

fn serve(name: &str) -> Response {
    let Some((_, media, body)) = ASSETS.iter().find(|(p, _, _)| *p == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    // The page changes with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Everything the page needs comes from here; nothing else may run in it or frame it.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    resp
}

/// `GET /`: the page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /{file}`: its scripts and style sheet.
pub async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}
