//! The HTTP client of `hoard push` and `hoard pull`: a thin layer over reqwest (rustls, no
//! OpenSSL) that retries what can be retried and turns the API's error bodies into
//! [`Error::Remote`]. The chunking, hashing and verifying stay in the synchronous core and
//! run on the blocking pool.

mod pull;
mod push;

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

pub use pull::{PullOptions, PullReport, pull};
pub use push::{PushReport, push};

use crate::config::ChunkerParams;
use crate::error::{Error, Result};

/// Attempts per request: the first and five retries, 0.25 s to 4 s apart.
const ATTEMPTS: u32 = 6;

/// What a client reports as it goes; every method defaults to doing nothing.
pub trait Progress: Sync {
    /// `n` more bytes of the local file were read and hashed.
    fn scanned(&self, _n: u64) {}
    /// `n` bytes turned out to be stored already (or found locally) and were not sent.
    fn skipped(&self, _n: u64) {}
    /// `n` more bytes of chunk data were moved over the wire.
    fn moved(&self, _n: u64) {}
}

/// A no-op [`Progress`].
pub struct Quiet;
impl Progress for Quiet {}

/// What `GET /v1/config` says.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerConfig {
    /// The store's chunker params: cut with these to dedup against what is stored.
    pub chunker: ChunkerParams,
    /// The store's zstd level.
    pub level: i32,
    /// Largest chunk the server takes.
    pub max_chunk: u32,
    /// Largest request body.
    pub max_body: usize,
    /// Most ids per query.
    pub max_ids: usize,
}

/// A connection to one hoard server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`), sending `token`.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] if the URL is not http(s).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidParams(format!(
                "server URL {base:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| Error::Transport {
                what: "setting up the HTTP client",
                source: e,
            })?;
        Ok(Client { http, base, token })
    }

    /// A request builder for `path` with the token set.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends the request `build` makes, retrying connection errors and 5xx (but 507) with
    /// backoff; turns error answers into [`Error::Remote`]. `ok` lists statuses that are not
    /// errors besides 2xx.
    pub(crate) async fn send(
        &self,
        what: &'static str,
        ok: &[StatusCode],
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            let last = attempt == ATTEMPTS;
            match build().send().await {
                Ok(r) if r.status().is_success() || ok.contains(&r.status()) => return Ok(r),
                Ok(r)
                    if r.status().is_server_error()
                        && r.status() != StatusCode::INSUFFICIENT_STORAGE
                        && !last =>
                {
                    tracing::warn!(status = %r.status(), what, attempt, "server error; retrying");
                }
                Ok(r) => return Err(remote_error(what, r).await),
                Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tracing::warn!(error = %e, what, attempt, "request failed; retrying");
                }
                Err(e) => return Err(Error::Transport { what, source: e }),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(4));
            attempt += 1;
        }
    }

    /// `GET /v1/config`.
    ///
    /// # Errors
    /// Transport and server errors.
    pub async fn config(&self) -> Result<ServerConfig> {
        let what = "the server's config";
        let r = self
            .send(what, &[], || {
                self.request(reqwest::Method::GET, "/v1/config")
            })
            .await?;
        r.json()
            .await
            .map_err(|e| Error::Transport { what, source: e })
    }
}

/// Reads an error answer into [`Error::Remote`].
pub(crate) async fn remote_error(what: &'static str, r: Response) -> Error {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => Error::Remote {
            what,
            status,
            code: b.error,
            message: b.message,
        },
        Err(_) => Error::Remote {
            what,
            status,
            code: "http".into(),
            message: text.chars().take(200).collect(),
        },
    }
}
