//! Export: manifest → for each id: index → pack read → unzstd → BLAKE3 == id? → out.
//!
//! The caller's thread walks the manifest one page at a time, reads, decodes and verifies a
//! batch of chunks in parallel over the rayon pool straight into one buffer, and hashes that
//! buffer into the whole-file hash (also over the pool); a writer thread puts the batches out
//! in order. At the end the file hash must equal the file id. A chunk
//! that fails verification stops the export with [`Error::Corrupt`] naming it: wrong bytes are
//! never passed on silently.

use std::cell::RefCell;
use std::io::Write;
use std::sync::mpsc;

use rayon::prelude::*;

use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest, Page};
use crate::store::{ChunkStore, StoredChunk};

/// Uncompressed bytes decoded per parallel batch = 8 MiB.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Batches queued for the writer.
const QUEUE_BATCHES: usize = 2;
/// Batches a store that batches reads (one behind a network) has in flight at once, each
/// read on a thread of its own while the decoding threads work on an earlier one. Measured
/// on a 1 GiB export from SeaweedFS on loopback: see the README's bucket-store benchmark.
const READ_AHEAD: usize = 3;

/// Reads chunk `r.id`, decodes it into `out` (exactly `r.len` bytes) and checks its hash.
///
/// # Errors
/// [`Error::ChunkNotFound`], [`Error::Corrupt`], or the store's errors.
pub fn read_verified_into(store: &dyn ChunkStore, r: &ChunkRef, out: &mut [u8]) -> Result<()> {
    read_decoded_into(store, r, out)?;
    check_hash(&r.id, out)
}

/// Reads chunk `r.id` and decodes it into `out` without hashing it: for callers that hash
/// the whole file instead, where a bad chunk shows as a whole-file mismatch.
fn read_decoded_into(store: &dyn ChunkStore, r: &ChunkRef, out: &mut [u8]) -> Result<()> {
    thread_local! {
        /// One payload buffer per decoding thread, reused for every chunk.
        static PAYLOAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    PAYLOAD.with(|cell| {
        // `out` is the manifest's length for the chunk; the store checks its own against it.
        debug_assert_eq!(out.len(), r.len as usize);
        store.read_decoded_into(&r.id, &mut cell.borrow_mut(), out)
    })
}

/// Decodes `payload` (chunk `r`, stored as `codec` of `raw_len` bytes) into `out`, which must
/// be `r.len` bytes as the store's length must be.
fn decode_checked(
    r: &ChunkRef,
    codec: Codec,
    raw_len: u32,
    payload: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if raw_len != r.len || out.len() != r.len as usize {
        return Err(Error::LengthMismatch {
            id: r.id,
            stored: raw_len,
            claimed: r.len,
        });
    }
    codec::decode_into(&r.id, codec, payload, out)
}

/// Checks that `payload`, stored as `codec` of `raw_len` bytes, decodes to the `r.len` bytes
/// that hash to `r.id` (decoded into a buffer of the calling thread's, reused).
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::Corrupt`].
pub fn verify_payload(r: &ChunkRef, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
    thread_local! {
        static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    OUT.with(|cell| {
        let mut out = cell.borrow_mut();
        out.resize(r.len as usize, 0);
        decode_checked(r, codec, raw_len, payload, &mut out)?;
        check_hash(&r.id, &out)
    })
}

/// Checks that `out`, just decoded, hashes to `id`.
///
/// # Errors
/// [`Error::Corrupt`] naming what it hashes to.
pub(crate) fn check_hash(id: &Hash, out: &[u8]) -> Result<()> {
    let actual = Hash::of(out);
    if actual != *id {
        return Err(Error::Corrupt {
            id: *id,
            detail: format!("content hashes to {actual}"),
        });
    }
    Ok(())
}

/// Reads the chunks `refs` and decodes them into `buf` back to back (its length is the sum of
/// theirs) over the rayon pool; with `verify`, each is also hashed against its id. A chunk
/// `known` has decoded already (an upload's, just checked) is copied instead. A store that
/// batches reads gets the rest in one [`ChunkStore::read_chunks`] (few requests, several at
/// once); any other reads each on the decoding thread, into a reused buffer.
///
/// # Errors
/// As [`read_verified_into`].
fn decode_batch(
    store: &dyn ChunkStore,
    refs: &[ChunkRef],
    buf: &mut [u8],
    verify: bool,
    known: &(dyn Fn(&Hash) -> Option<bytes::Bytes> + Sync),
) -> Result<()> {
    let fetched = fetch(store, refs, known)?;
    decode_fetched(store, refs, fetched, buf, verify)
}

/// What [`fetch`] got for each chunk of a batch: its decoded bytes from the caller, its stored
/// entry (from a store that batches reads), or nothing yet (read it on the decoding thread).
type Fetched = Vec<(Option<bytes::Bytes>, Option<StoredChunk>)>;

/// The read half of [`decode_batch`]: what the caller knows, and from a store that batches
/// reads, the stored entries of the rest in one call.
fn fetch(
    store: &dyn ChunkStore,
    refs: &[ChunkRef],
    known: &(dyn Fn(&Hash) -> Option<bytes::Bytes> + Sync),
) -> Result<Fetched> {
    let mut out: Fetched = refs
        .iter()
        .map(|r| (known(&r.id).filter(|b| b.len() == r.len as usize), None))
        .collect();
    if store.batches_reads() {
        let ids: Vec<Hash> = refs
            .iter()
            .zip(&out)
            .filter(|(_, (k, _))| k.is_none())
            .map(|(r, _)| r.id)
            .collect();
        let mut got = store.read_chunks(&ids)?.into_iter();
        for (k, slot) in &mut out {
            if k.is_none() {
                *slot = got.next();
            }
        }
    }
    Ok(out)
}

/// The decode half of [`decode_batch`].
fn decode_fetched(
    store: &dyn ChunkStore,
    refs: &[ChunkRef],
    fetched: Fetched,
    buf: &mut [u8],
    verify: bool,
) -> Result<()> {
    split_mut(buf, refs.iter().map(|r| r.len as usize))
        .into_par_iter()
        .zip(refs)
        .zip(fetched)
        .try_for_each(|((out, r), got)| {
            match got {
                (Some(k), _) => {
                    out.copy_from_slice(&k);
                    return Ok(());
                }
                (None, Some(c)) => decode_checked(r, c.codec, c.raw_len, &c.payload, out)?,
                (None, None) => read_decoded_into(store, r, out)?,
            }
            if verify {
                check_hash(&r.id, out)
            } else {
                Ok(())
            }
        })
}

/// Cuts `buf` into consecutive slices of `lens` (which must add up to at most its length), so
/// that chunks can be decoded into one buffer in parallel.
pub fn split_mut(buf: &mut [u8], lens: impl Iterator<Item = usize>) -> Vec<&mut [u8]> {
    let mut slices = Vec::new();
    let mut rest = buf;
    for len in lens {
        let (head, tail) = rest.split_at_mut(len);
        slices.push(head);
        rest = tail;
    }
    slices
}

/// Reads chunk `r.id` into a new buffer, decoded and verified.
///
/// # Errors
/// As [`read_verified_into`].
pub fn read_verified(store: &dyn ChunkStore, r: &ChunkRef) -> Result<Vec<u8>> {
    let mut out = vec![0; r.len as usize];
    read_verified_into(store, r, &mut out)?;
    Ok(out)
}

/// Calls `f` with each page of `manifest`, in order, after checking it against the header.
///
/// # Errors
/// Missing or damaged pages, or whatever `f` returns.
pub fn for_each_page(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    mut f: impl FnMut(Page) -> Result<()>,
) -> Result<()> {
    for_each_page_in(store, manifest, 0, |_, page| f(page).map(|()| true))
}

/// Calls `f(offset of the page's first byte, page)` for each page that holds bytes at or after
/// `from`, in order, until `f` returns false. Pages wholly before `from` are not read.
///
/// # Errors
/// Missing or damaged pages, or whatever `f` returns.
pub fn for_each_page_in(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    from: u64,
    mut f: impl FnMut(u64, Page) -> Result<bool>,
) -> Result<()> {
    walk_pages(store, manifest, from, |start, _, page| f(start, page))
}

/// As [`for_each_page_in`], with each page's encoded bytes too (as stored: they hash to the
/// manifest's page hash).
///
/// # Errors
/// Missing or damaged pages, or whatever `f` returns.
pub fn walk_pages(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    from: u64,
    mut f: impl FnMut(u64, Vec<u8>, Page) -> Result<bool>,
) -> Result<()> {
    let mut offset = 0u64;
    for pref in &manifest.pages {
        let start = offset;
        offset += pref.bytes;
        if offset <= from && pref.bytes > 0 {
            continue;
        }
        let bytes = store.get_page(&pref.hash)?.ok_or(Error::PageNotFound {
            file: manifest.file_id,
            page: pref.hash,
        })?;
        if Hash::of(&bytes) != pref.hash {
            return Err(Error::BadManifest(manifest.file_id));
        }
        let page = Page::decode(&bytes)?;
        manifest.check_page(pref, &page)?;
        if !f(start, bytes, page)? {
            break;
        }
    }
    Ok(())
}

/// Writes the file `manifest` describes to `out`, verifying every chunk and the whole file.
///
/// `progress` gets the number of bytes written after each batch, from the writer thread.
///
/// # Errors
/// [`Error::Corrupt`] or [`Error::ChunkNotFound`] for a bad chunk, [`Error::FileMismatch`] if
/// the whole file does not hash to its id, [`Error::Stream`] if `out` fails.
pub fn restore<W: Write + Send>(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    out: W,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let actual = rebuild(store, manifest, out, progress, true)?;
    same_id(manifest, actual)
}

fn same_id(manifest: &Manifest, actual: Hash) -> Result<()> {
    if actual == manifest.file_id {
        Ok(())
    } else {
        Err(Error::FileMismatch {
            expected: manifest.file_id,
            actual,
        })
    }
}

/// Checks that the chunks of `manifest` make the file it claims: decodes them all and hashes
/// the whole (each chunk was checked when it was stored; a bad one shows as a mismatch here).
/// This is what completing an upload session costs: about an export to nowhere.
///
/// # Errors
/// [`Error::FileMismatch`], [`Error::ChunkNotFound`], [`Error::Corrupt`] for an undecodable
/// payload, or the store's errors.
pub fn verify_file(store: &dyn ChunkStore, manifest: &Manifest) -> Result<()> {
    let actual = rebuild(store, manifest, std::io::sink(), &|_| {}, false)?;
    same_id(manifest, actual)
}

/// The BLAKE3 of the file the chunks of `manifest` make, whatever id it claims (a tus upload
/// resumed after a restart learns its id this way). With no id to compare against, every
/// chunk is checked against its own id.
///
/// # Errors
/// [`Error::Corrupt`] or [`Error::ChunkNotFound`] for a bad chunk; the store's errors.
pub fn hash_file(store: &dyn ChunkStore, manifest: &Manifest) -> Result<Hash> {
    rebuild(store, manifest, std::io::sink(), &|_| {}, true)
}

fn rebuild<W: Write + Send>(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    out: W,
    progress: &(dyn Fn(u64) + Sync),
    verify: bool,
) -> Result<Hash> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_BATCHES);
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let writer = s.spawn(move || -> Result<()> {
            let mut out = out;
            for batch in rx {
                out.write_all(&batch).map_err(Error::Output)?;
                progress(batch.len() as u64);
                let _ = recycle_tx.send(batch);
            }
            out.flush().map_err(Error::Output)
        });

        // A store that batches reads (one behind a network) is read up to READ_AHEAD
        // batches ahead, each batch by one of as many reader threads, so that the requests of
        // the next batches overlap each other and the decoding and hashing of this one. Any
        // other is read by the decoding threads themselves. A walker hands out the batches in
        // order, one per credit; a credit comes back as each batch is taken for decoding, so
        // no more than READ_AHEAD batches are ever held read and not yet decoded.
        let readers = if store.batches_reads() { READ_AHEAD } else { 1 };
        let stopped = || Error::stage_stopped("chunk decoding stopped");
        let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(readers);
        for _ in 0..readers {
            let _ = credit_tx.send(());
        }
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<(usize, Vec<ChunkRef>, u64)>(0);
        let walker = s.spawn(move || -> Result<()> {
            let mut seq = 0;
            for_each_batch(store, manifest, |refs, bytes| {
                credit_rx.recv().map_err(|_| stopped())?;
                jobs_tx
                    .send((seq, refs.to_vec(), bytes))
                    .map_err(|_| stopped())?;
                seq += 1;
                Ok(())
            })
        });
        // The readers share the receiving end and own it: once the last one stops, the
        // walker's next send fails instead of waiting for ever.
        let jobs_rx = std::sync::Arc::new(std::sync::Mutex::new(jobs_rx));
        type ReadBatch = (usize, Result<(Vec<ChunkRef>, u64, Fetched)>);
        let (read_tx, read_rx) = mpsc::sync_channel::<ReadBatch>(readers);
        for _ in 0..readers {
            let (jobs_rx, read_tx) = (jobs_rx.clone(), read_tx.clone());
            s.spawn(move || {
                loop {
                    let job = crate::lock(&jobs_rx).recv();
                    let Ok((seq, refs, bytes)) = job else { break };
                    // Reads nothing from a store that does not batch reads (its decoding
                    // threads read each chunk).
                    let got = fetch(store, &refs, &|_| None).map(|f| (refs, bytes, f));
                    if read_tx.send((seq, got)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((jobs_rx, read_tx));
        let mut hasher = blake3::Hasher::new();
        let fed = (|| -> Result<()> {
            // Batches come back in any order: each is decoded in its turn.
            let mut early = std::collections::BTreeMap::new();
            let mut next = 0;
            for (seq, got) in read_rx {
                early.insert(seq, got);
                while let Some(got) = early.remove(&next) {
                    next += 1;
                    let (refs, bytes, fetched) = got?;
                    let _ = credit_tx.send(());
                    // Decode straight into one contiguous buffer: one write, no per-chunk
                    // copies.
                    let mut batch = recycle_rx.try_recv().unwrap_or_default();
                    batch.resize(bytes as usize, 0);
                    decode_fetched(store, &refs, fetched, &mut batch, verify)?;
                    hasher.update_rayon(&batch);
                    if tx.send(batch).is_err() {
                        // The writer failed: stop reading; its own error is the one reported.
                        return Err(Error::stage_stopped("output writer stopped"));
                    }
                }
            }
            Ok(())
        })();
        // Ends the walker (no more credits) and with it the readers.
        drop(credit_tx);
        drop(tx);
        let written = writer.join().expect("writer thread panicked");
        let read = walker.join().expect("manifest walker thread panicked");
        written?;
        fed?;
        read?;
        Ok(Hash::from(hasher.finalize()))
    })
}

/// Calls `f(refs, bytes)` with the chunks of `manifest` in order, in runs of about
/// [`BATCH_BYTES`] within a page (`bytes` their total length).
///
/// # Errors
/// Missing or damaged pages, or whatever `f` returns.
fn for_each_batch(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    mut f: impl FnMut(&[ChunkRef], u64) -> Result<()>,
) -> Result<()> {
    for_each_page(store, manifest, |page| {
        let mut start = 0;
        while start < page.chunks.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < page.chunks.len() && (end == start || bytes < BATCH_BYTES) {
                bytes += u64::from(page.chunks[end].len);
                end += 1;
            }
            f(&page.chunks[start..end], bytes)?;
            start = end;
        }
        Ok(())
    })
}

/// Writes bytes `range` of the file to `out`, checking every chunk it reads. Use [`restore`]
/// for the whole file: only it can check the whole-file hash. The chunks go in batches of
/// about [`RANGE_BATCH`] (one lookup and a few requests each from a store behind a network,
/// decoded on all cores), so memory holds one batch whatever the range.
///
/// # Errors
/// As [`restore`], except that the whole file is not hashed.
pub fn restore_range<W: Write>(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    range: std::ops::Range<u64>,
    mut out: W,
) -> Result<()> {
    let mut pos = 0u64;
    let mut batch = RangeBatch {
        refs: Vec::new(),
        start: 0,
        len: 0,
        buf: Vec::new(),
    };
    for_each_page_in(store, manifest, range.start, |page_start, page| {
        pos = page_start;
        for r in &page.chunks {
            let (start, end) = (pos, pos + u64::from(r.len));
            pos = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                return Ok(false);
            }
            if batch.refs.is_empty() {
                batch.start = start;
                batch.len = 0;
            }
            batch.refs.push(*r);
            batch.len += u64::from(r.len);
            if batch.len >= RANGE_BATCH {
                batch.write(store, &range, &mut out)?;
            }
        }
        Ok(true)
    })?;
    batch.write(store, &range, &mut out)?;
    out.flush().map_err(Error::Output)
}

/// Bytes of chunks [`restore_range`] reads and decodes at once = 4 MiB.
pub const RANGE_BATCH: u64 = 4 << 20;

/// Chunks of a range, read and written together.
struct RangeBatch {
    refs: Vec<ChunkRef>,
    /// The file offset of the first chunk, and the chunks' total length.
    start: u64,
    len: u64,
    buf: Vec<u8>,
}

impl RangeBatch {
    /// Reads, checks and writes the part of the batch inside `range`; empties the batch.
    fn write(
        &mut self,
        store: &dyn ChunkStore,
        range: &std::ops::Range<u64>,
        out: &mut impl Write,
    ) -> Result<()> {
        if self.refs.is_empty() {
            return Ok(());
        }
        self.buf.resize(self.len as usize, 0);
        decode_batch(store, &self.refs, &mut self.buf, true, &|_| None)?;
        let from = range.start.saturating_sub(self.start) as usize;
        let to = (range.end.min(self.start + self.len) - self.start) as usize;
        out.write_all(&self.buf[from..to]).map_err(Error::Output)?;
        self.refs.clear();
        Ok(())
    }
}

/// Hashes a file whose manifest pages arrive on `pages` (their hashes, in file order; each
/// page stored before it is sent) as its chunks become present in the store. A page is read
/// only when the hash gets near it, so what waits costs 32 bytes a page, not 36 a chunk (four
/// waiting 1.86 M-ref sessions held 268 MB of refs). It decodes each run of present chunks in
/// parallel and feeds the whole-file hash. It calls `go_on(starved)` at every step: with `true` when the next chunk
/// is not stored yet (to wait for it), and stops when it returns false. `cached` may hold chunks just uploaded, decoded: those are not decoded again.
/// Returns the whole-file hash once `pages` is closed and every chunk was hashed. An
/// upload session runs this while the client is still reading and sending, so that
/// completing does not have to read the whole file back.
///
/// # Errors
/// [`Error::Stream`] if `wait` gave up; [`Error::Corrupt`] for an undecodable payload; the
/// store's errors.
pub fn hash_arriving(
    store: &dyn ChunkStore,
    pages: &mpsc::Receiver<Hash>,
    cached: &(dyn Fn(&Hash) -> Option<bytes::Bytes> + Sync),
    mut go_on: impl FnMut(bool) -> bool,
) -> Result<Hash> {
    /// Bytes decoded per parallel step = 4 MiB.
    const STEP: u64 = 4 << 20;
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    let mut queue: std::collections::VecDeque<ChunkRef> = std::collections::VecDeque::new();
    let mut queued_bytes = 0u64;
    let mut waiting: std::collections::VecDeque<Hash> = std::collections::VecDeque::new();
    let mut closed = false;
    let stopped = || Error::stage_stopped("upload verification stopped");
    loop {
        if !go_on(false) {
            return Err(stopped());
        }
        while !closed {
            match pages.try_recv() {
                Ok(hash) => waiting.push_back(hash),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => closed = true,
            }
        }
        // Keep a step's worth of refs ahead; read pages as the hash gets to them.
        while queued_bytes < STEP
            && let Some(hash) = waiting.pop_front()
        {
            let bytes = store
                .get_page(&hash)?
                .ok_or_else(|| Error::stage_stopped("a manifest page of the upload is gone"))?;
            let page = Page::decode(&bytes)?;
            queued_bytes += page.chunks.iter().map(|r| u64::from(r.len)).sum::<u64>();
            queue.extend(page.chunks);
        }
        if queue.is_empty() {
            if closed && waiting.is_empty() {
                break;
            }
            match pages.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(hash) => waiting.push_back(hash),
                Err(mpsc::RecvTimeoutError::Timeout) if !go_on(true) => return Err(stopped()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
            continue;
        }
        let mut run = Vec::new();
        let mut bytes = 0;
        for r in &queue {
            if !run.is_empty() && bytes >= STEP {
                break;
            }
            bytes += u64::from(r.len);
            run.push(*r);
        }
        let ids: Vec<Hash> = run.iter().map(|r| r.id).collect();
        let present = store.missing(&ids)?.iter().take_while(|m| !**m).count();
        if present == 0 {
            if !go_on(true) {
                return Err(stopped());
            }
            continue;
        }
        let run = &run[..present];
        let len: usize = run.iter().map(|r| r.len as usize).sum();
        buf.resize(len, 0);
        // Chunks just uploaded were decoded to check them: no second decode.
        decode_batch(store, run, &mut buf, false, cached)?;
        hasher.update_rayon(&buf);
        queued_bytes -= len as u64;
        queue.drain(..present);
    }
    Ok(Hash::from(hasher.finalize()))
}
