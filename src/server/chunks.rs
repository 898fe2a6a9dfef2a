//! Chunk endpoints: which are missing, upload (one or many), download, fetch many.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::json;

use super::body::{DRAIN_AFTER_ERROR, drain, is_binary};
use super::error::ApiError;
use super::{AppState, Principal, blocking};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::hash::{HASH_LEN, Hash};
use crate::manifest::ChunkRef;
use crate::store::Pin;
use crate::upload::session::SessionId;
use crate::upload::sink::{SinkReport, Verified, verify};
use crate::wire::{self, BINARY, Frame};

/// Reads a whole body of at most `limit` bytes.
///
/// The bytes it and what is made of it take are reserved first from the server's memory
/// budget: the declared length (or `limit` when none is declared) times `factor` (how much
/// more memory the handler's parse of it takes). The reservation is held until the returned
/// permit is dropped, so bodies in flight together stay within the budget whatever clients
/// send; a request that cannot get its share within 10 s gets 503.
pub(super) async fn read_body(
    st: &AppState,
    body: Body,
    what: &'static str,
    limit: usize,
    factor: u64,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), ApiError> {
    // A declared length over the limit is refused before any of the body is read.
    let hint = http_body::Body::size_hint(&body);
    let declared = hint.lower();
    if declared > limit as u64 {
        // Answered at once; the body is read and dropped meanwhile (a bounded amount, within
        // the rate and idle limits), so a client still sending sees the 413 rather than a
        // reset connection (seen as a flaky "broken pipe" in a test sending 400 KB).
        tokio::spawn(drain(body, DRAIN_AFTER_ERROR as usize));
        return Err(ApiError::Lib(Error::TooLarge {
            what,
            size: declared,
            limit: limit as u64,
        }));
    }
    let expect = hint.exact().unwrap_or(limit as u64);
    let held = match st.reserve(expect.saturating_mul(factor)).await {
        Ok(h) => h,
        Err(e) => {
            // Read the body and throw it away (no memory) before answering 503: a client
            // still sending would otherwise see its connection closed, not the answer.
            drain(body, limit).await;
            return Err(e);
        }
    };
    let bytes = read_limited(body, what, limit).await?;
    Ok((bytes, held))
}

async fn read_limited(body: Body, what: &'static str, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::Lib(Error::TooLarge {
                what,
                size: limit as u64 + 1,
                limit: limit as u64,
            })
        } else {
            ApiError::BadRequest(format!("cannot read the {what}: {e}"))
        }
    })
}

/// Parses an id list in either encoding.
pub(super) fn parse_ids(headers: &HeaderMap, body: &[u8], max: usize) -> Result<Vec<Hash>> {
    if is_binary(headers) {
        return wire::unpack_ids(body, max);
    }
    let ids: Vec<Hash> = serde_json::from_slice(body).map_err(|e| Error::Malformed {
        what: "id list",
        detail: e.to_string(),
    })?;
    if ids.len() > max {
        return Err(Error::TooLarge {
            what: "id list",
            size: ids.len() as u64,
            limit: max as u64,
        });
    }
    Ok(ids)
}

/// Answers an id list in the encoding it came in.
pub(super) fn ids_response(binary: bool, ids: &[Hash]) -> Response {
    if binary {
        ([(header::CONTENT_TYPE, BINARY)], wire::pack_ids(ids)).into_response()
    } else {
        Json(ids).into_response()
    }
}

/// Ids looked up per step of a binary missing query = 65 536 (2 MiB of body).
const MISSING_GROUP: usize = 1 << 16;

/// `POST /v1/chunks/missing`: the ids the store lacks, in input order. A binary body is
/// looked up group by group as it streams in, so memory holds one group and the answer.
pub async fn missing(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max = st.limits().max_ids;
    // A namespace sharing the server is told only of chunks it referenced or sent.
    let private = st.private_chunks(&who);
    if !is_binary(&headers) {
        // 67 bytes per id covers a JSON array of hex strings with separators. Parsed, the
        // ids, their flags and the answer (as long as the body if every id is missing) take
        // about twice as much again (measured: 24 concurrent 67 MB queries reserving 2x peaked
        // the server at 553 MiB, over the 512 MiB budget).
        let (body, _held) = read_body(&st, body, "id list", max * 67 + 64, 3).await?;
        let state = st.clone();
        let missing = blocking(move || {
            let ids = parse_ids(&headers, &body, max)?;
            let flags = state.missing_for(private.as_ref(), &ids)?;
            Ok(ids
                .into_iter()
                .zip(flags)
                .filter(|(_, m)| *m)
                .map(|(id, _)| id)
                .collect::<Vec<_>>())
        })
        .await?;
        return Ok(ids_response(false, &missing));
    }
    // The ids and the answer, each at most the body's length (its declared length, or the
    // most ids a query may hold).
    let declared = http_body::Body::size_hint(&body)
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= max * HASH_LEN);
    let _held = st
        .reserve(declared.unwrap_or(max * HASH_LEN) as u64 * 2)
        .await?;
    // The answer is at most as long as the body: sized once, it never copies itself to grow.
    let declared = declared.unwrap_or(0);
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::with_capacity(MISSING_GROUP * HASH_LEN);
    let mut answer: Vec<u8> = Vec::with_capacity(declared);
    let mut seen = 0usize;
    loop {
        let next = stream
            .try_next()
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the id list: {e}")))?;
        let done = next.is_none();
        if let Some(bytes) = next {
            pending.extend_from_slice(&bytes);
        }
        if pending.len() >= MISSING_GROUP * HASH_LEN || (done && !pending.is_empty()) {
            let whole = if done {
                pending.len()
            } else {
                pending.len() - pending.len() % HASH_LEN
            };
            let group: Vec<u8> = pending.drain(..whole).collect();
            seen += group.len() / HASH_LEN;
            if seen > max {
                return Err(Error::TooLarge {
                    what: "id list",
                    size: seen as u64,
                    limit: max as u64,
                }
                .into());
            }
            let (state, private) = (st.clone(), private.clone());
            let packed = blocking(move || {
                let ids = wire::unpack_ids(&group, usize::MAX)?;
                let flags = state.missing_for(private.as_ref(), &ids)?;
                let found: Vec<Hash> = ids
                    .into_iter()
                    .zip(flags)
                    .filter(|(_, m)| *m)
                    .map(|(id, _)| id)
                    .collect();
                Ok(wire::pack_ids(&found))
            })
            .await?;
            answer.extend_from_slice(&packed);
        }
        if done {
            break;
        }
    }
    Ok(([(header::CONTENT_TYPE, BINARY)], answer).into_response())
}

/// Where `who`'s chunk answers must come from what its namespace referenced or sent
/// (`known.rs`): notes that it sent `chunks` and returns what was new to it
/// ([`AppState::learn`]).
pub(super) async fn remember(
    st: &AppState,
    who: &Principal,
    chunks: Vec<(Hash, u32)>,
) -> Result<Option<SinkReport>, ApiError> {
    let Some(ns) = st.private_chunks(who) else {
        return Ok(None);
    };
    let state = st.clone();
    blocking(move || state.learn(&ns, chunks).map(Some)).await
}

/// Query of the upload endpoints: the session the chunks belong to, to keep it alive.
#[derive(Deserialize)]
pub struct SessionQuery {
    session: Option<String>,
}

/// Verifies `frames` in parallel and stores them through the sink.
async fn store_frames(
    st: &AppState,
    body: Bytes,
    single: Option<Hash>,
    session: Option<SessionId>,
) -> Result<(usize, SinkReport), ApiError> {
    let level = st.store().config().level;
    let max_chunk = st.limits().max_chunk;
    let keep_raw = session.is_some_and(|sid| st.0.sessions.wants_chunks(sid));
    let store = st.store().clone();
    // Decoding is bounded by what the chunks claim to be: at most 4 bytes of chunk per byte
    // of body limit, so a body of tiny frames that each claim a big chunk is refused before
    // anything is decompressed.
    let max_raw = (st.limits().max_body as u64).saturating_mul(4);
    // The frames up to the first bad one are verified and stored; the bad one (if any) is
    // reported after, naming its place, so a resuming client sends from there.
    let (verified, refused, bases) = blocking(
        move || -> Result<(Vec<Verified>, Option<Error>, Option<Pin>)> {
            let delta = store.config().delta;
            let (frames, parse_error): (Vec<Frame<'_>>, Option<Error>) = match single {
                Some(id) => (
                    vec![Frame {
                        id,
                        codec: Codec::Raw,
                        raw_len: body.len() as u32,
                        payload: &body,
                    }],
                    None,
                ),
                None => wire::parse_frames_until_bad(&body, max_chunk),
            };
            let claimed: u64 = frames.iter().map(|f| u64::from(f.raw_len)).sum();
            if claimed > max_raw {
                return Err(Error::TooLarge {
                    what: "uncompressed chunk batch",
                    size: claimed,
                    limit: max_raw,
                });
            }
            // Decoded chunks kept for the session's hash: at most its cache's worth.
            let budget = std::sync::atomic::AtomicU64::new(if keep_raw { 16 << 20 } else { 0 });
            let results: Vec<Result<(Verified, bool)>> = frames
                .par_iter()
                .map(|f| {
                    let want = u64::from(f.raw_len);
                    let keep = budget
                        .fetch_update(
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                            |left| left.checked_sub(want),
                        )
                        .is_ok();
                    // The delta stage needs every chunk's bytes; what the session does not keep
                    // is let go after it.
                    verify(f, &body, level, keep || delta).map(|v| (v, keep))
                })
                .collect();
            let mut good = Vec::with_capacity(results.len());
            let mut refused = None;
            for (index, r) in results.into_iter().enumerate() {
                match r {
                    Ok(v) => good.push(v),
                    Err(e) => {
                        refused = Some((index, e));
                        break;
                    }
                }
            }
            let refused = refused.or_else(|| parse_error.map(|e| (good.len(), e)));
            // Deltas against similar stored chunks (`delta.rs`), their bases pinned until the
            // sink has recorded them.
            let bases = if delta && !good.is_empty() {
                let pin = store.guard().pin();
                let candidates: Vec<crate::delta::Candidate<'_>> = good
                    .iter()
                    .map(|(v, _)| crate::delta::Candidate {
                        id: v.id,
                        data: &v.raw,
                        plain_len: Some(v.payload.len()),
                    })
                    .collect();
                let decisions = crate::delta::decide(&*store, &pin, level, &candidates)?;
                for ((v, _), d) in good.iter_mut().zip(decisions) {
                    v.features = d.features;
                    if let crate::delta::Encoding::Delta(payload) = d.encoding {
                        v.codec = Codec::Delta;
                        v.payload = Bytes::from(payload);
                    }
                }
                Some(pin)
            } else {
                None
            };
            let good: Vec<Verified> = good
                .into_iter()
                .map(|(mut v, keep)| {
                    if !keep {
                        v.raw = Bytes::new();
                    }
                    v
                })
                .collect();
            let refused = refused.map(|(index, e)| match single {
                Some(_) => e,
                None => Error::BadFrame {
                    index,
                    kept: index,
                    source: Box::new(e),
                },
            });
            Ok((good, refused, bases))
        },
    )
    .await?;
    if verified.is_empty()
        && let Some(e) = refused
    {
        return Err(e.into());
    }
    let n = verified.len();
    let received: u64 = verified.iter().map(|v| u64::from(v.raw_len)).sum();
    let decoded: Vec<(Hash, Bytes)> = verified
        .iter()
        .filter(|v| !v.raw.is_empty())
        .map(|v| (v.id, v.raw.clone()))
        .collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink_st = st.clone();
    blocking(move || {
        sink_st.0.sink.submit(
            verified,
            Box::new(move |r| {
                drop(bases); // the deltas are recorded (or failed): their bases need no pin
                let _ = tx.send(r);
            }),
        );
        Ok(())
    })
    .await?;
    let report = rx
        .await
        .map_err(|_| ApiError::Internal("chunk sink dropped a request".into()))??;
    st.0.metrics.chunks_received(n as u64, received, report);
    if report.new_chunks > 0 {
        st.0.sessions.chunks_arrived(session, &decoded);
    }
    if let Some(e) = refused {
        return Err(e.into());
    }
    Ok((n, report))
}

/// Counts a chunk upload's body toward its session's bytes sent (for the hooks).
async fn count_sent(st: &AppState, who: &Principal, session: Option<SessionId>, body: &Bytes) {
    if let Some(sid) = session {
        // The session was checked when the request began; one that ended meanwhile (or an
        // index that did not answer) only misses this count.
        let (state, n, ns) = (st.clone(), body.len() as u64, who.ns.clone());
        if let Err(e) = blocking(move || state.0.sessions.touch(sid, &ns, n)).await {
            tracing::warn!(session = %sid, error = ?e, "a session's bytes went uncounted");
        }
    }
}

/// Keeps the session the chunks are tagged with alive; returns it. A `?session=` that is
/// not a session id, or names no open session, is an error (400, 404 or 410), not ignored.
async fn touch(
    st: &AppState,
    who: &Principal,
    q: &SessionQuery,
) -> Result<Option<SessionId>, ApiError> {
    let Some(text) = q.session.as_deref() else {
        return Ok(None);
    };
    let sid = text.parse::<SessionId>().map_err(Error::from)?;
    let (state, ns) = (st.clone(), who.ns.clone());
    blocking(move || state.0.sessions.touch(sid, &ns, 0)).await?;
    Ok(Some(sid))
}

fn parse_id(s: &str) -> Result<Hash, ApiError> {
    s.parse().map_err(|e: crate::hash::ParseHashError| {
        ApiError::Lib(Error::Malformed {
            what: "chunk id",
            detail: e.to_string(),
        })
    })
}

/// `PUT /v1/chunks/{id}`: one chunk, raw or `Content-Encoding: zstd`.
pub async fn upload_one(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<SessionQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let session = touch(&st, &who, &q).await?;
    let max = st.limits().max_chunk as usize;
    let _slot = st.upload_slot().await?;
    let (body, _held) = read_body(&st, body, "chunk", max, 2).await?;
    count_sent(&st, &who, session, &body).await;
    let zstd = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
    let raw = if zstd {
        let payload = body.clone();
        let decoded = blocking(move || {
            zstd::bulk::decompress(&payload, max).map_err(|e| Error::Malformed {
                what: "zstd chunk body",
                detail: format!("{e} (or over the {max}-byte chunk limit)"),
            })
        })
        .await?;
        Bytes::from(decoded)
    } else {
        body
    };
    if raw.is_empty() {
        return Err(Error::Malformed {
            what: "chunk",
            detail: "empty body".into(),
        }
        .into());
    }
    let len = raw.len() as u32;
    let (_, report) = store_frames(&st, raw, Some(id), session).await?;
    let report = remember(&st, &who, vec![(id, len)])
        .await?
        .unwrap_or(report);
    let status = if report.new_chunks > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "id": id, "new": report.new_chunks > 0 })),
    )
        .into_response())
}

/// `POST /v1/chunks`: many chunks as length-prefixed frames (see `wire.rs`).
pub async fn upload_batch(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<SessionQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let session = touch(&st, &who, &q).await?;
    let limit = st.limits().max_body;
    let _slot = st.upload_slot().await?;
    let (body, _held) = read_body(&st, body, "chunk batch", limit, 2).await?;
    count_sent(&st, &who, session, &body).await;
    // The ids, for a namespace told only of chunks it sent (headers only: no decoding).
    let sent: Vec<(Hash, u32)> = match st.private_chunks(&who) {
        Some(_) => wire::parse_frames_until_bad(&body, st.limits().max_chunk)
            .0
            .iter()
            .map(|f| (f.id, f.raw_len))
            .collect(),
        None => Vec::new(),
    };
    let (n, report) = store_frames(&st, body, None, session).await?;
    let report = remember(&st, &who, sent).await?.unwrap_or(report);
    Ok(Json(json!({
        "chunks": n, "new_chunks": report.new_chunks, "new_bytes": report.new_bytes
    }))
    .into_response())
}

/// `GET`/`HEAD /v1/chunks/{id}`: the chunk's bytes (verified), or whether it is there.
pub async fn download_one(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    method: Method,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let store = st.store();
    // A chunk its namespace may not be told of is not found, exactly as one nobody stored.
    let private = st.private_chunks(&who);
    let present = {
        let state = st.clone();
        blocking(move || Ok(!state.missing_for(private.as_ref(), &[id])?[0])).await?
    };
    if !present {
        return Err(Error::ChunkNotFound(id).into());
    }
    if method == Method::HEAD {
        return Ok(StatusCode::OK.into_response());
    }
    let data = blocking(move || {
        let c = store.read_chunk(&id)?;
        let data = crate::codec::decode(&id, c.codec, &c.payload, c.raw_len as usize)?;
        let actual = Hash::of(&data);
        if actual != id {
            return Err(Error::Corrupt {
                id,
                detail: format!("content hashes to {actual}"),
            });
        }
        Ok(data)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, BINARY)], data).into_response())
}

thread_local! {
    /// A fetch worker's payload buffer (the decode buffer is `verify_payload`'s).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Ids checked and framed per step of a fetch.
const FETCH_GROUP: usize = 64;

/// `POST /v1/chunks/fetch`: the stored frames of many chunks, each verified before it is
/// sent, streamed in request order. A chunk the store lacks fails the request before any
/// byte is sent if it is the first; later, the stream is cut (the client sees it short).
pub async fn fetch(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max = st.limits().max_ids;
    let (body, _held) = read_body(&st, body, "id list", max * 67 + 64, 2).await?;
    let ids = {
        let headers = headers.clone();
        blocking(move || parse_ids(&headers, &body, max)).await?
    };
    let store = st.store();
    let missing = {
        let (ids, state, private) = (ids.clone(), st.clone(), st.private_chunks(&who));
        blocking(move || state.missing_for(private.as_ref(), &ids)).await?
    };
    if let Some(i) = missing.iter().position(|m| *m) {
        return Err(Error::ChunkNotFound(ids[i]).into());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let sent = st.clone();
    let (rt, idle) = (tokio::runtime::Handle::current(), st.limits().idle_timeout);
    tokio::task::spawn_blocking(move || {
        // A chunk checked (decoded and hashed: a corrupt chunk is never sent) and framed.
        let frame = |id: &Hash, codec, raw_len: u32, payload: &[u8]| {
            let r = ChunkRef {
                id: *id,
                len: raw_len,
            };
            crate::restore::verify_payload(&r, codec, raw_len, payload)?;
            let mut f = Vec::with_capacity(wire::FRAME_HEADER_LEN + payload.len());
            wire::put_frame(&mut f, id, codec, raw_len, payload);
            Ok(f)
        };
        for group in ids.chunks(FETCH_GROUP) {
            let framed: Result<Vec<Vec<u8>>> = if store.batches_reads() {
                // Few requests for the whole group, then checked in parallel.
                store.read_chunks(group).and_then(|stored| {
                    stored
                        .par_iter()
                        .map(|c| frame(&c.id, c.codec, c.raw_len, &c.payload))
                        .collect()
                })
            } else {
                group
                    .par_iter()
                    .map(|id| {
                        SCRATCH.with(|cell| {
                            // Buffers reused per thread: no fresh pages per chunk.
                            let payload = &mut *cell.borrow_mut();
                            let (codec, raw_len) = store.read_chunk_into(id, payload)?;
                            frame(id, codec, raw_len, payload)
                        })
                    })
                    .collect()
            };
            let msg = match framed {
                Ok(frames) => {
                    let bytes = frames.concat();
                    sent.0.metrics.bytes_served(bytes.len() as u64);
                    Ok(Bytes::from(bytes))
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "chunk fetch stopped");
                    Err(std::io::Error::other("chunk fetch failed"))
                }
            };
            let failed = msg.is_err();
            // A client that stops reading for longer than the idle timeout frees this worker.
            if super::body::send_within(&rt, &tx, msg, idle).is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(BINARY));
    Ok(resp)
}
