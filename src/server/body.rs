//! Helpers for bodies that several routes share: which encoding a request's body is in,
//! reading and dropping the body of a refused request, and sending a streamed response's next
//! piece without waiting on a client for ever.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;

use crate::wire::BINARY;

/// Body bytes read and dropped after a request was refused or failed, so that a client still
/// sending sees the answer rather than a connection reset under its upload.
pub(super) const DRAIN_AFTER_ERROR: u64 = 64 << 20;

/// Returns true if and only if the request's `Content-Type` is the binary encoding.
pub(super) fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(BINARY.as_bytes()))
}

/// Sends `msg`, waiting at most `idle` for the client to take what came before.
pub(super) fn send_within(
    rt: &tokio::runtime::Handle,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    msg: std::io::Result<Bytes>,
    idle: Duration,
) -> std::io::Result<()> {
    // The timer is made inside `block_on`, which enters the runtime: the caller may be a
    // plain thread (the restore's writer) outside it.
    match rt.block_on(async { tokio::time::timeout(idle, tx.send(msg)).await }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads and discards up to `limit` bytes of `body`.
pub(super) async fn drain(body: Body, limit: usize) {
    drain_stream(&mut body.into_data_stream(), limit).await;
}

/// Reads and discards up to `limit` more bytes of `stream`.
pub(super) async fn drain_stream(stream: &mut axum::body::BodyDataStream, limit: usize) {
    use futures_util::StreamExt;
    let mut seen = 0usize;
    while let Some(Ok(piece)) = stream.next().await {
        seen += piece.len();
        if seen > limit {
            break;
        }
    }
}

/// Reads and discards up to [`DRAIN_AFTER_ERROR`] more bytes of a body being read as a
/// blocking `Read`, before a refusal or failure is answered.
pub(super) fn drain_read(reader: &mut impl std::io::Read) {
    let _ = std::io::copy(
        &mut std::io::Read::take(reader, DRAIN_AFTER_ERROR),
        &mut std::io::sink(),
    );
}
