//! `hoard pull`: fetch a file's manifest, take every chunk that can be had locally (an
//! interrupted earlier pull, a seed file, a local store), download only the rest, verify each
//! chunk and the whole file, then rename into place.
//!
//! The file is built in `.NAME.hoard-partial` beside the target. If a pull is interrupted, the
//! next one checks the chunks already in that file and fetches only the others.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use rayon::prelude::*;
use reqwest::{Method, header};
use serde::Serialize;

use super::{ATTEMPTS, Client, Progress};
use crate::codec;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::ChunkRef;
use crate::restore;
use crate::scan;
use crate::store::ChunkStore;
use crate::wire::{self, BINARY, FlatManifest};

/// Raw bytes of chunks asked for per fetch request = 4 MiB.
const FETCH_BYTES: u64 = 4 << 20;
/// Fetch requests in flight at once.
const IN_FLIGHT: usize = 4;

/// Where else chunks may come from.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// An older local copy of the file (or any file with shared content).
    pub seed: Option<PathBuf>,
    /// A local store to take chunks from.
    pub store: Option<Arc<dyn ChunkStore>>,
}

/// What a pull did.
#[derive(Clone, Debug, Serialize)]
pub struct PullReport {
    /// The file id.
    pub id: Hash,
    /// File size.
    pub size: u64,
    /// Chunks in its manifest.
    pub chunks: u64,
    /// Distinct chunks found locally (earlier partial pull, seed, local store).
    pub reused_chunks: u64,
    /// Distinct chunks downloaded.
    pub downloaded_chunks: u64,
    /// Their uncompressed bytes.
    pub downloaded_bytes: u64,
    /// Response body bytes received for chunks and the manifest.
    pub bytes_received: u64,
}

/// Where each distinct chunk goes in the file.
struct Layout {
    /// id → (len, offsets), in first-appearance order of `order`.
    places: HashMap<Hash, (u32, Vec<u64>)>,
    order: Vec<Hash>,
}

impl Layout {
    fn new(chunks: &[ChunkRef]) -> Self {
        let mut places: HashMap<Hash, (u32, Vec<u64>)> = HashMap::new();
        let mut order = Vec::new();
        let mut at = 0u64;
        for r in chunks {
            places
                .entry(r.id)
                .or_insert_with(|| {
                    order.push(r.id);
                    (r.len, Vec::new())
                })
                .1
                .push(at);
            at += u64::from(r.len);
        }
        Layout { places, order }
    }

    fn write(&self, out: &File, id: &Hash, data: &[u8]) -> Result<()> {
        if let Some((_, offsets)) = self.places.get(id) {
            for at in offsets {
                out.write_all_at(data, *at)
                    .map_err(|e| Error::Stream("cannot write the file being pulled", e))?;
            }
        }
        Ok(())
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "pull".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.hoard-partial"))
}

/// Pulls the file `spec` (name, `NAME@N`, id or id prefix) into `out`.
///
/// # Errors
/// [`Error::Transport`]/[`Error::Remote`] from the server, [`Error::Corrupt`] for a chunk
/// that fails verification, [`Error::FileMismatch`] if the file does not hash to its id,
/// I/O errors on the local files.
pub async fn pull(
    client: &Client,
    spec: &str,
    out: &Path,
    opts: PullOptions,
    progress: Arc<dyn Progress + Send>,
) -> Result<PullReport> {
    let what = "fetching the manifest";
    let path = format!("/v1/manifests/{spec}");
    let r = client
        .send(what, &[], || {
            client
                .request(Method::GET, &path)
                .header(header::ACCEPT, BINARY)
        })
        .await?;
    let body = r
        .bytes()
        .await
        .map_err(|e| Error::Transport { what, source: e })?;
    let flat = FlatManifest::from_binary(&body)?;
    // Asked for by id (or prefix): the file must be that one, whatever the server resolved.
    if crate::names::looks_like_id(spec)
        && !flat.id.to_hex().starts_with(&spec.to_ascii_lowercase())
    {
        return Err(Error::Malformed {
            what: "manifest",
            detail: format!("asked for file {spec}, the server sent file {}", flat.id),
        });
    }
    let total: u64 = flat.chunks.iter().map(|r| u64::from(r.len)).sum();
    if total != flat.size || flat.chunks.iter().any(|r| r.len == 0) {
        return Err(Error::Malformed {
            what: "manifest",
            detail: "chunk lengths do not add up to the file size".into(),
        });
    }
    let mut report = PullReport {
        id: flat.id,
        size: flat.size,
        chunks: flat.chunks.len() as u64,
        reused_chunks: 0,
        downloaded_chunks: 0,
        downloaded_bytes: 0,
        bytes_received: body.len() as u64,
    };
    let partial = partial_path(out);
    let resumed = partial.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(Error::io("cannot create", &partial))?;
    file.set_len(flat.size)
        .map_err(Error::io("cannot size", &partial))?;
    let file = Arc::new(file);
    let layout = Arc::new(Layout::new(&flat.chunks));
    let flat = Arc::new(flat);

    // Local sources first, on the blocking pool.
    let todo = {
        let (file, layout, flat, p) =
            (file.clone(), layout.clone(), flat.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            local_sources(&file, &layout, &flat, resumed, &opts, &*p)
        })
        .await
        .map_err(|e| Error::Stream("local chunk search failed", std::io::Error::other(e)))??
    };
    report.reused_chunks = (layout.order.len() - todo.len()) as u64;

    // Then the server, several batches at a time.
    let mut batches: Vec<Vec<Hash>> = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    for id in todo {
        bytes += u64::from(layout.places[&id].0);
        cur.push(id);
        if bytes >= FETCH_BYTES {
            batches.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    // When every chunk comes from the server and none repeats, the batches are the file in
    // order: a hashing thread takes each decoded batch as it lands, in order, and the file
    // need not be read back. Otherwise the file is read back and hashed at the end.
    let in_order = report.reused_chunks == 0 && layout.order.len() == flat.chunks.len();
    let (hash_tx, hash_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    // Batch buffers go round (fetch → hash → fetch): fresh 4 MiB buffers cost this VM more in
    // page faults than the decoding itself.
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let hasher = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut h = blake3::Hasher::new();
            for buf in hash_rx {
                h.update_rayon(&buf);
                crate::lock(&pool).push(buf);
            }
            Hash::from(h.finalize())
        })
    };
    let mut fetched = futures_util::stream::iter(batches.into_iter().map(|ids| {
        let (client, file, layout, p, pool) = (
            client.clone(),
            file.clone(),
            layout.clone(),
            progress.clone(),
            pool.clone(),
        );
        async move { fetch(&client, ids, file, layout, p, pool).await }
    }))
    .buffered(IN_FLIGHT);
    while let Some(got) = fetched.next().await {
        let got = got?;
        report.downloaded_chunks += got.chunks;
        report.downloaded_bytes += got.raw;
        report.bytes_received += got.wire;
        if in_order {
            let tx = hash_tx.clone();
            // A full queue blocks: wait for the hashing thread off the runtime.
            let _ = tokio::task::spawn_blocking(move || tx.send(got.buf)).await;
        } else {
            crate::lock(&pool).push(got.buf);
        }
    }
    drop(fetched);
    drop(hash_tx);
    let streamed = hasher.join().map_err(|_| {
        Error::Stream(
            "file check failed",
            std::io::Error::other("hasher panicked"),
        )
    })?;

    // The whole file must be the id, or nothing is renamed.
    let id = flat.id;
    let actual = if in_order {
        streamed
    } else {
        let file2 = file.clone();
        tokio::task::spawn_blocking(move || hash_file(&file2))
            .await
            .map_err(|e| Error::Stream("file check failed", std::io::Error::other(e)))??
    };
    if actual != id {
        let (file, layout) = (file.clone(), layout.clone());
        let bad = tokio::task::spawn_blocking(move || find_bad_chunk(&file, &layout))
            .await
            .map_err(|e| Error::Stream("file check failed", std::io::Error::other(e)))?;
        if let Some((bad, got)) = bad {
            // The partial file stays: the next pull checks each chunk and fetches this anew.
            return Err(Error::Corrupt {
                id: bad,
                detail: format!("downloaded bytes hash to {got}; pull again to fetch it anew"),
            });
        }
        let _ = std::fs::remove_file(&partial);
        return Err(Error::FileMismatch {
            expected: id,
            actual,
        });
    }
    std::fs::rename(&partial, out).map_err(Error::io("cannot rename the pulled file to", out))?;
    Ok(report)
}

/// Fills what it can from the partial file, the seed and the local store; returns the ids
/// still needed, in file order.
fn local_sources(
    file: &File,
    layout: &Layout,
    flat: &FlatManifest,
    resumed: bool,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Vec<Hash>> {
    let mut need: Vec<Hash> = layout.order.clone();
    let found = |have: &dyn Fn(&Hash) -> bool, need: &mut Vec<Hash>| {
        need.retain(|id| {
            let keep = !have(id);
            if !keep {
                progress.skipped(u64::from(layout.places[id].0));
            }
            keep
        });
    };
    if resumed {
        // Chunks of an interrupted pull: check each at its first place, copy to the others.
        let ok: Vec<bool> = need
            .par_iter()
            .map(|id| {
                let (len, offsets) = &layout.places[id];
                let mut buf = vec![0; *len as usize];
                file.read_exact_at(&mut buf, offsets[0]).is_ok() && Hash::of(&buf) == *id && {
                    layout.write(file, id, &buf).is_ok()
                }
            })
            .collect();
        let done: std::collections::HashSet<Hash> = need
            .iter()
            .zip(ok)
            .filter(|(_, ok)| *ok)
            .map(|(id, _)| *id)
            .collect();
        found(&|id| done.contains(id), &mut need);
    }
    if let Some(seed) = &opts.seed
        && !need.is_empty()
    {
        let params = flat.chunker.unwrap_or_default();
        let f = File::open(seed).map_err(Error::io("cannot open seed", seed))?;
        let s = scan::scan(&f, params, &|_| {})?;
        let wanted: std::collections::HashSet<Hash> = need.iter().copied().collect();
        let mut at = 0u64;
        let mut done = std::collections::HashSet::new();
        for r in &s.chunks {
            if wanted.contains(&r.id) && !done.contains(&r.id) {
                let mut buf = vec![0; r.len as usize];
                f.read_exact_at(&mut buf, at)
                    .map_err(Error::io("cannot read seed", seed))?;
                // The seed may change under us: trust only bytes that still hash right.
                if Hash::of(&buf) == r.id {
                    layout.write(file, &r.id, &buf)?;
                    done.insert(r.id);
                }
            }
            at += u64::from(r.len);
        }
        found(&|id| done.contains(id), &mut need);
    }
    if let Some(store) = &opts.store
        && !need.is_empty()
    {
        let missing = store.missing(&need)?;
        let mut done = std::collections::HashSet::new();
        for (id, m) in need.iter().zip(missing) {
            if !m {
                let len = layout.places[id].0;
                let data = restore::read_verified(&**store, &ChunkRef { id: *id, len })?;
                layout.write(file, id, &data)?;
                done.insert(*id);
            }
        }
        found(&|id| done.contains(id), &mut need);
    }
    Ok(need)
}

/// The first chunk of the partial file whose bytes are not its id, and what they hash to.
fn find_bad_chunk(file: &File, layout: &Layout) -> Option<(Hash, Hash)> {
    layout.order.iter().find_map(|id| {
        let (len, offsets) = &layout.places[id];
        offsets.iter().find_map(|at| {
            let mut buf = vec![0; *len as usize];
            let got = match file.read_exact_at(&mut buf, *at) {
                Ok(()) => Hash::of(&buf),
                Err(_) => Hash::of(b""),
            };
            (got != *id).then_some((*id, got))
        })
    })
}

/// Downloads one batch of chunks, decodes each and writes it to its places. Retries the
/// whole batch if the connection breaks mid-body.
async fn fetch(
    client: &Client,
    ids: Vec<Hash>,
    file: Arc<File>,
    layout: Arc<Layout>,
    progress: Arc<dyn Progress + Send>,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
) -> Result<Fetched> {
    let what = "downloading chunks";
    let body = Bytes::from(wire::pack_ids(&ids));
    let mut attempt = 1;
    let data = loop {
        let r = client
            .send(what, &[], || {
                client
                    .request(Method::POST, "/v1/chunks/fetch")
                    .header(header::CONTENT_TYPE, BINARY)
                    .body(body.clone())
            })
            .await?;
        match r.bytes().await {
            Ok(b) => break b,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "chunk download cut off; retrying");
                attempt += 1;
            }
            Err(e) => return Err(Error::Transport { what, source: e }),
        }
    };
    let wire_len = data.len() as u64;
    let (n, raw, buf) = tokio::task::spawn_blocking(move || -> Result<(u64, u64, Vec<u8>)> {
        let max = layout.places.values().map(|(l, _)| *l).max().unwrap_or(0);
        let frames = wire::parse_frames(&data, max)?;
        if frames.len() != ids.len() || frames.iter().zip(&ids).any(|(f, id)| f.id != *id) {
            return Err(Error::Malformed {
                what: "chunk download",
                detail: format!(
                    "asked for {} chunks, got {} other frames",
                    ids.len(),
                    frames.len()
                ),
            });
        }
        for f in &frames {
            let want = layout.places[&f.id].0;
            if f.raw_len != want {
                return Err(Error::Corrupt {
                    id: f.id,
                    detail: format!("server sent {} bytes, the manifest says {want}", f.raw_len),
                });
            }
        }
        // Decoded straight into one buffer, in batch order; not hashed here: the whole file
        // is, before it is renamed into place, and on a mismatch each chunk is checked to
        // name the culprit (`find_bad_chunk`).
        let total: usize = frames.iter().map(|f| f.raw_len as usize).sum();
        let mut buf = crate::lock(&pool).pop().unwrap_or_default();
        buf.clear();
        buf.resize(total, 0);
        restore::split_mut(&mut buf, frames.iter().map(|f| f.raw_len as usize))
            .into_par_iter()
            .zip(&frames)
            .try_for_each(|(out, f)| codec::decode_into(&f.id, f.codec, f.payload, out))?;
        write_runs(&file, &layout, &frames, &buf)?;
        Ok((frames.len() as u64, total as u64, buf))
    })
    .await
    .map_err(|e| Error::Stream("chunk check failed", std::io::Error::other(e)))??;
    progress.moved(raw);
    Ok(Fetched {
        chunks: n,
        raw,
        wire: wire_len,
        buf,
    })
}

/// One downloaded batch: counts, and its chunks decoded back to back (already written).
struct Fetched {
    chunks: u64,
    raw: u64,
    wire: u64,
    buf: Vec<u8>,
}

/// Writes a batch decoded into `buf` (in `frames` order) to all its places: chunks whose
/// first places follow each other in the file go out in one write. Many small writes to one
/// file from several threads made the kernel spin on the file's lock (measured: more system
/// time than a whole export).
fn write_runs(file: &File, layout: &Layout, frames: &[wire::Frame<'_>], buf: &[u8]) -> Result<()> {
    let write = |data: &[u8], at: u64| {
        file.write_all_at(data, at)
            .map_err(|e| Error::Stream("cannot write the file being pulled", e))
    };
    let mut from = 0usize; // start in `buf` of the run being gathered
    let mut run_at = 0u64; // its place in the file
    let mut pos = 0usize;
    for f in frames {
        let offsets = &layout.places[&f.id].1;
        let len = f.raw_len as usize;
        if pos > from && run_at + (pos - from) as u64 != offsets[0] {
            write(&buf[from..pos], run_at)?;
            from = pos;
        }
        if pos == from {
            run_at = offsets[0];
        }
        // Later places of a repeated chunk: written on their own.
        for at in &offsets[1..] {
            write(&buf[pos..pos + len], *at)?;
        }
        pos += len;
    }
    if pos > from {
        write(&buf[from..pos], run_at)?;
    }
    Ok(())
}

/// BLAKE3 of a whole file, read in 8 MiB pieces and hashed over the rayon pool.
fn hash_file(file: &File) -> Result<Hash> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut at = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, at)
            .map_err(|e| Error::Stream("cannot read back the pulled file", e))?;
        if n == 0 {
            break;
        }
        h.update_rayon(&buf[..n]);
        at += n as u64;
    }
    Ok(Hash::from(h.finalize()))
}
