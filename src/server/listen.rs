//! Accepting connections: a cap on how many are open, a deadline for a request's headers
//! (which also closes kept-alive connections left idle), a minimum rate for streamed bodies,
//! and graceful shutdown with a deadline.
//!
//! axum's own `serve` offers none of these; hyper's HTTP/1 connection builder has the header
//! timeout, hyper-util the graceful-shutdown watcher. A body's rate is checked here: the
//! idle timeout (tower-http) limits only pauses, so a client trickling one byte a second
//! would otherwise hold a worker, a slot and its memory for as long as it likes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::parse_errors::JsonParseErrors;
use super::{AppState, Limits};

/// Serves `app` on `listener` until `shutdown` resolves, then waits up to
/// `limits.shutdown_timeout` for requests in flight and closes what is left.
///
/// # Errors
/// Never for a failed accept (that is logged, and accepting goes on after a pause: running
/// out of descriptors must not stop the server); the signature keeps room for setup errors.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to close before accepting (the kernel's backlog
        // holds the rest); idle ones close within the header timeout.
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let io = TokioIo::new(JsonParseErrors::new(stream));
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                deadline = ?limits.shutdown_timeout,
                "shutdown deadline passed: closing the connections still open"
            );
        }
    }
    Ok(())
}

/// Middleware: a request body must bring at least `min_body_rate` bytes a second, averaged
/// over each `idle_timeout`; a slower one fails (the handler sees a timed-out read). The
/// body's size hint is its `Content-Length`.
pub async fn min_rate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let l = st.limits();
    let window = l.idle_timeout.max(Duration::from_secs(1));
    let least = l.min_body_rate.saturating_mul(window.as_secs().max(1));
    // tower-http's timeout body does not pass the declared length on; this one does, so a
    // handler can refuse a body over its limit before reading it.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let req = req.map(|body| {
        Body::new(MinRate {
            inner: body,
            window,
            least,
            declared,
            since: Instant::now(),
            got: 0,
        })
    });
    next.run(req).await
}

/// A body that fails once a window passes with fewer than `least` bytes received.
struct MinRate {
    inner: Body,
    window: Duration,
    least: u64,
    /// `Content-Length`, if the request had one.
    declared: Option<u64>,
    since: Instant,
    got: u64,
}

impl http_body::Body for MinRate {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.got += data.len() as u64;
            if self.least > 0 && self.since.elapsed() >= self.window {
                if self.got < self.least {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the body arrived slower than the server's minimum ({} bytes in {:?})",
                            self.got, self.window
                        ),
                    );
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
                self.since = Instant::now();
                self.got = 0;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.declared {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => self.inner.size_hint(),
        }
    }
}

/// Middleware: a body in a `Content-Encoding` the route does not decode is refused (415)
/// before it is read, instead of being stored as if it were plain. Only a single chunk
/// (`PUT /v1/chunks/{id}`) may come as `zstd`; `identity` is the same as none.
pub async fn encodings(req: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(enc) = req.headers().get(axum::http::header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("").trim().to_ascii_lowercase();
        let zstd_ok =
            req.method() == axum::http::Method::PUT && req.uri().path().starts_with("/v1/chunks/");
        if !(enc == "identity" || (enc == "zstd" && zstd_ok)) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Encoding {enc:?} is not accepted here: send the body plain (only PUT /v1/chunks/{{id}} takes zstd)"
            )));
        }
    }
    Ok(next.run(req).await)
}
