//! `hoard push`: scan the file locally, open an upload session with its manifest, send only
//! the chunks the server lacks (zstd, in batches, several at once), then complete.
//!
//! Re-running an interrupted push costs a local scan and sends only what is still missing:
//! everything the server acknowledged before the interruption is durable there.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;
use reqwest::{Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Client, Progress, remote_error};
use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::scan;
use crate::wire::{self, BINARY, FlatManifest};

/// Raw bytes of chunks per upload request = 4 MiB (less if the server's body limit is lower).
const BATCH_BYTES: usize = 4 << 20;
/// Upload requests in flight at once.
const IN_FLIGHT: usize = 4;
/// Rounds of "complete, upload what it says is missing" before giving up.
const COMPLETE_ROUNDS: usize = 3;

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// The file id (what `b3sum` prints).
    pub id: Hash,
    /// The name it was recorded under.
    pub name: Option<String>,
    /// File size in bytes.
    pub size: u64,
    /// Chunks in its manifest.
    pub chunks: u64,
    /// Chunks the server did not have.
    pub new_chunks: u64,
    /// Their uncompressed bytes.
    pub new_bytes: u64,
    /// Request body bytes sent: manifest plus chunk batches.
    pub bytes_sent: u64,
    /// The upload session used.
    pub session: String,
}

#[derive(Deserialize)]
struct BatchAnswer {
    new_chunks: u64,
    new_bytes: u64,
}

#[derive(Deserialize)]
struct Incomplete {
    missing: Vec<Hash>,
}

#[derive(Default)]
struct Sent {
    bytes: u64,
    new_chunks: u64,
    new_bytes: u64,
}

/// Pushes the file at `path` to the server, recorded under `name`.
///
/// # Errors
/// [`Error::Io`] for the local file; [`Error::Transport`] and [`Error::Remote`] when the
/// server cannot be reached or refuses (after retries).
pub async fn push(
    client: &Client,
    path: &Path,
    name: Option<String>,
    progress: Arc<dyn Progress + Send>,
) -> Result<PushReport> {
    let cfg = client.config().await?;
    let file = Arc::new(File::open(path).map_err(Error::io("cannot open", path))?);

    // The manifest streams to the server while the file is read, so the server checks the
    // chunks it already has while this side is still cutting and hashing.
    let (body_tx, mut body_rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(64);
    let head = Bytes::from(wire::manifest_head(cfg.chunker));
    let _ = body_tx.send(Ok(head)).await;
    let opening = {
        let (client, name) = (client.clone(), name.clone());
        tokio::spawn(async move {
            let stream = futures_util::stream::poll_fn(move |cx| body_rx.poll_recv(cx));
            let rb = client.request(Method::POST, "/v1/uploads");
            let rb = match &name {
                Some(n) => rb.query(&[("name", n)]),
                None => rb,
            };
            rb.header(header::CONTENT_TYPE, BINARY)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
        })
    };
    let scanned = {
        let (file, p, tx) = (file.clone(), progress.clone(), body_tx.clone());
        tokio::task::spawn_blocking(move || {
            scan::scan_with(&*file, cfg.chunker, &|n| p.scanned(n), |refs| {
                // If the server went away the fallback below sends the whole manifest.
                let _ = tx.blocking_send(Ok(Bytes::from(wire::manifest_refs(refs))));
            })
        })
        .await
        .map_err(|e| Error::Stream("scanner failed", std::io::Error::other(e)))??
    };
    let tail = wire::manifest_tail(scanned.chunks.len() as u64, scanned.size, &scanned.id);
    let _ = body_tx.send(Ok(Bytes::from(tail))).await;
    drop(body_tx);
    let flat = FlatManifest {
        id: scanned.id,
        size: scanned.size,
        chunker: Some(cfg.chunker),
        chunks: scanned.chunks,
    };
    let body = Bytes::from(flat.to_binary(cfg.chunker));
    let mut sent = Sent {
        bytes: body.len() as u64,
        ..Sent::default()
    };
    let what = "opening the upload session";
    let streamed = opening
        .await
        .map_err(|e| Error::Stream("upload task failed", std::io::Error::other(e)))?;
    let r = match streamed {
        Ok(r) if r.status().is_success() => r,
        Ok(r) if r.status().is_client_error() => return Err(remote_error(what, r).await),
        // A streamed body cannot be replayed: send the whole manifest, with retries.
        _ => {
            client
                .send(what, &[], || {
                    let rb = client.request(Method::POST, "/v1/uploads");
                    let rb = match &name {
                        Some(n) => rb.query(&[("name", n)]),
                        None => rb,
                    };
                    rb.header(header::CONTENT_TYPE, BINARY).body(body.clone())
                })
                .await?
        }
    };
    let sid = r
        .headers()
        .get("hoard-session")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Error::Malformed {
            what: "upload session answer",
            detail: "no hoard-session header".into(),
        })?;
    let body = r
        .bytes()
        .await
        .map_err(|e| Error::Transport { what, source: e })?;
    let mut missing: HashSet<Hash> = wire::unpack_ids(&body, usize::MAX)?.into_iter().collect();
    let missing_bytes: u64 = unique_missing(&flat.chunks, &missing)
        .map(|(_, r)| u64::from(r.len))
        .sum();
    progress.skipped(flat.size.saturating_sub(missing_bytes));

    let flat = Arc::new(flat);
    let batch_bytes = BATCH_BYTES
        .min(cfg.max_body / 2)
        .max(cfg.max_chunk as usize);
    for round in 0..=COMPLETE_ROUNDS {
        if !missing.is_empty() {
            let got = upload(
                client,
                &sid,
                file.clone(),
                flat.clone(),
                std::mem::take(&mut missing),
                cfg.level,
                batch_bytes,
                progress.clone(),
            )
            .await?;
            sent.bytes += got.bytes;
            sent.new_chunks += got.new_chunks;
            sent.new_bytes += got.new_bytes;
        }
        let what = "completing the upload";
        let path = format!("/v1/uploads/{sid}/complete");
        let r = client
            .send(what, &[StatusCode::CONFLICT], || {
                client.request(Method::POST, &path)
            })
            .await?;
        if r.status() != StatusCode::CONFLICT {
            break;
        }
        if round == COMPLETE_ROUNDS {
            return Err(remote_error(what, r).await);
        }
        // Chunks went missing after the server said it had them (gc, a lost disk): send them.
        let inc: Incomplete = r
            .json()
            .await
            .map_err(|e| Error::Transport { what, source: e })?;
        missing = inc.missing.into_iter().collect();
    }
    Ok(PushReport {
        id: flat.id,
        name,
        size: flat.size,
        chunks: flat.chunks.len() as u64,
        new_chunks: sent.new_chunks,
        new_bytes: sent.new_bytes,
        bytes_sent: sent.bytes,
        session: sid,
    })
}

/// The first ref of each id in `wanted`, with its offset in the file.
fn unique_missing<'a>(
    chunks: &'a [ChunkRef],
    wanted: &'a HashSet<Hash>,
) -> impl Iterator<Item = (u64, &'a ChunkRef)> + 'a {
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    chunks.iter().filter_map(move |r| {
        let at = offset;
        offset += u64::from(r.len);
        (wanted.contains(&r.id) && seen.insert(r.id)).then_some((at, r))
    })
}

/// Reads, compresses and sends the chunks in `wanted`, [`IN_FLIGHT`] requests at a time.
#[allow(clippy::too_many_arguments)]
async fn upload(
    client: &Client,
    sid: &str,
    file: Arc<File>,
    flat: Arc<FlatManifest>,
    wanted: HashSet<Hash>,
    level: i32,
    batch_bytes: usize,
    progress: Arc<dyn Progress + Send>,
) -> Result<Sent> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Bytes, u64)>>(2);
    let producer = tokio::task::spawn_blocking(move || {
        let mut batch: Vec<(u64, ChunkRef)> = Vec::new();
        let mut raw = 0usize;
        let send = |batch: &[(u64, ChunkRef)]| -> bool {
            let msg = frame_batch(&file, batch, level);
            let failed = msg.is_err();
            tx.blocking_send(msg).is_ok() && !failed
        };
        for (at, r) in unique_missing(&flat.chunks, &wanted) {
            batch.push((at, *r));
            raw += r.len as usize;
            if raw >= batch_bytes {
                if !send(&batch) {
                    return;
                }
                batch.clear();
                raw = 0;
            }
        }
        if !batch.is_empty() {
            send(&batch);
        }
    });
    let mut sent = Sent::default();
    let mut tasks: JoinSet<Result<(u64, BatchAnswer)>> = JoinSet::new();
    let path = format!("/v1/chunks?session={sid}");
    let collect =
        |done: std::result::Result<Result<(u64, BatchAnswer)>, tokio::task::JoinError>,
         sent: &mut Sent|
         -> Result<()> {
            let (n, a) =
                done.map_err(|e| Error::Stream("upload task failed", std::io::Error::other(e)))??;
            sent.bytes += n;
            sent.new_chunks += a.new_chunks;
            sent.new_bytes += a.new_bytes;
            Ok(())
        };
    while let Some(msg) = rx.recv().await {
        let (body, raw) = msg?;
        while tasks.len() >= IN_FLIGHT {
            let done = tasks.join_next().await.expect("tasks is not empty");
            collect(done, &mut sent)?;
        }
        let (client, path, progress) = (client.clone(), path.clone(), progress.clone());
        tasks.spawn(async move {
            let what = "uploading chunks";
            let n = body.len() as u64;
            let r = client
                .send(what, &[], || {
                    client
                        .request(Method::POST, &path)
                        .header(header::CONTENT_TYPE, BINARY)
                        .body(body.clone())
                })
                .await?;
            let a: BatchAnswer = r
                .json()
                .await
                .map_err(|e| Error::Transport { what, source: e })?;
            progress.moved(raw);
            Ok((n, a))
        });
    }
    while let Some(done) = tasks.join_next().await {
        collect(done, &mut sent)?;
    }
    producer
        .await
        .map_err(|e| Error::Stream("chunk reader failed", std::io::Error::other(e)))?;
    Ok(sent)
}

/// Reads the chunks of `batch` from `file`, compresses them in parallel and frames them.
fn frame_batch(file: &File, batch: &[(u64, ChunkRef)], level: i32) -> Result<(Bytes, u64)> {
    let framed: Vec<Vec<u8>> = batch
        .par_iter()
        .map(|(at, r)| {
            let mut data = vec![0; r.len as usize];
            file.read_exact_at(&mut data, *at)
                .map_err(|e| Error::Stream("cannot read the file being pushed", e))?;
            let (codec, payload) = match codec::compress(&data, level) {
                Some(z) => (Codec::Zstd, z),
                None => (Codec::Raw, data),
            };
            let mut f = Vec::with_capacity(wire::FRAME_HEADER_LEN + payload.len());
            wire::put_frame(&mut f, &r.id, codec, r.len, &payload);
            Ok(f)
        })
        .collect::<Result<_>>()?;
    let raw = batch.iter().map(|(_, r)| u64::from(r.len)).sum();
    Ok((Bytes::from(framed.concat()), raw))
}
