//! The JSON error body on the answers hyper writes itself, before any router runs: a request
//! line or URI it cannot parse (400), a URI over 64 KiB (414), headers over its buffer (431).
//!
//! hyper answers those with a bare head (`content-length: 0`) and closes the connection; no
//! hook lets a server give them a body. This wraps the connection's writes: a head that starts
//! with one of those statuses and says `content-length: 0` can only be one of hyper's (every
//! 4xx hoard writes has a JSON body), and is replaced by the same status with the body every
//! other error answer has. Everything else passes through untouched, vectored writes included.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose automatic parse-error answers carry the JSON error body.
pub struct JsonParseErrors<IO> {
    io: IO,
    /// The replacement answer still to be written, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> JsonParseErrors<IO> {
    pub fn new(io: IO) -> Self {
        JsonParseErrors { io, pending: None }
    }
}

/// The answer to write instead of `head`, if `head` is one of hyper's automatic ones.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (status, code, message) = if head.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "bad_request",
            "the request line or a header could not be parsed",
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (414, "uri_too_long", "the URI is longer than 64 KiB")
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "headers_too_large",
            "the request headers are too large",
        )
    } else {
        return None;
    };
    let lower = head.to_ascii_lowercase();
    let bare = lower.windows(21).any(|w| w == b"\r\ncontent-length: 0\r\n");
    if !bare || !lower.ends_with(b"\r\n\r\n") {
        return None;
    }
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Some(answer.into_bytes())
}

impl<IO: AsyncWrite + Unpin> JsonParseErrors<IO> {
    /// Writes what is left of the replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((answer, done)) = &mut self.pending {
            if *done == answer.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &answer[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonParseErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = replacement(buf) {
            self.pending = Some((answer, 0));
            // hyper's head counts as written; the answer goes out with the next poll.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // An automatic answer is a head alone: one slice.
        if let [only] = bufs
            && let Some(answer) = replacement(only)
        {
            self.pending = Some((answer, 0));
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn only_hypers_bare_parse_error_heads_are_replaced() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(replacement(bare).unwrap()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{answer}"
        );
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "uri_too_long");
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        // Ours, with a body; other statuses; a head split across writes: left alone.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n";
        assert!(replacement(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
        let part = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n";
        assert!(replacement(part).is_none());
    }
}
