//! tus 1.0 uploads: a byte stream that arrives in `PATCH`es, cut into chunks as it comes,
//! storing only the chunks the store lacks, resumable at the exact byte after a restart.
//!
//! ```text
//! create (Upload-Length) ─▶ UPLOADING ─PATCH … PATCH─▶ offset = length ─▶ COMPLETE (manifest, name)
//!                              └─ DELETE (terminated) / idle past the TTL (expired): record forgotten
//! ```
//!
//! What is durable, and why a `PATCH` resumes where it stopped: the record keeps the manifest
//! so far (pages already stored, plus the refs of the unfinished page) and the *tail*, the
//! bytes after the last cut point (fewer than the chunker's max). Bytes are cut as they
//! arrive; a chunk is final once `max` bytes follow its start (the same rule the import's
//! chunker follows, so cut points are those of `hoard import`). Every 8 MiB, and when a
//! `PATCH` ends for any reason (done, cut off, refused), the new chunks are stored durably
//! (through the server's chunk sink), then the record is written and flushed. `HEAD` reports
//! the record's offset, so what it says is always on disk; a server killed in the middle of a
//! `PATCH` loses at most the bytes after the last checkpoint, and the client resends them.
//!
//! A `PATCH` with `Upload-Checksum` is all or nothing: nothing is recorded until the whole body
//! has arrived and matched (its chunks may already be in the packs; gc takes them if it did
//! not match). gc keeps an unfinished upload's chunks: [`open_uploads`] lists them, and a
//! `PATCH` pins what it stores until its checkpoint is written (the argument in `gc.rs`).
//!
//! Record (sled tree `tus`): version 1 + bincode of [`Upload`]. It is rewritten only when
//! the stream is cut (pages and refs grow), so a `PATCH` of a few bytes does not rewrite it.
//!
//! Tail: the bytes after the last cut point, kept by the store ([`ChunkStore::write_tail`]:
//! the local store appends them to a file, see `store/local/tails.rs`). A checkpoint writes only
//! the bytes that arrived since the last one, with the tail's meta `1 ‖ touched[8 LE] ‖
//! received[8 LE]` (the upload's last write time and bytes received, which the record would
//! otherwise be rewritten for). So each byte received is written about once, whatever the
//! size of the `PATCH`es: write amplification is bounded per byte, plus a fixed cost per
//! request.
//!
//! Order, and why a crash loses nothing `HEAD` reported: a checkpoint writes the record (if the
//! stream was cut), then the new tail bytes. Reading takes the tail from the record's cut point
//! on; a tail that does not reach back to it (a crash came between the two writes) is left
//! out. `HEAD` reports where the bytes read end, all durable, and the client sends the rest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, PAGE_CHUNKS, PageRef};
use crate::namespace::Namespace;
use crate::record;
use crate::store::{ChunkStore, Hold, TailRun, UploadKind};
use crate::upload::session::SessionId;

mod append;
mod headers;

use headers::name_from;
pub use headers::{Algorithm, CHECKSUM_ALGORITHMS, Checksum, parse_metadata};

/// Format version of tus upload records.
const TUS_VERSION: u8 = 1;
/// Bytes buffered before they are cut and stored = 8 MiB; also the most a server kill in the
/// middle of a `PATCH` makes the client send again. With the compressed copies of the new
/// chunks, a `PATCH` holds about twice this in memory.
pub(super) const STEP_BYTES: usize = 8 << 20;
/// Bytes read from the body at a time.
pub(super) const READ_BYTES: usize = 1 << 20;
/// How long a request waits for another one on the same upload to finish (after asking it to
/// stop: see [`TusUploads::preempt`]).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// Most bytes of page refs a record may come to hold (half the record limit).
pub(super) const MAX_PAGE_LIST: u64 = 8 << 20;
/// Format version of a tail's meta.
const TAIL_VERSION: u8 = 1;

/// Where a tus upload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TusState {
    /// Bytes are still to come.
    Uploading,
    /// Every byte arrived; the file is stored (and named).
    Complete,
}

/// The persisted record of one tus upload (the tail is stored beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upload {
    /// Its id (the last part of its URL).
    pub id: SessionId,
    /// `Upload-Length`: the file's size.
    pub length: u64,
    /// `Upload-Metadata` as the client sent it (echoed by `HEAD`).
    pub metadata: Option<String>,
    /// The key of the name the file gets (metadata `filename`, else `name`), which says the
    /// upload's namespace (see `namespace.rs`); see [`Upload::name`].
    pub name: Option<String>,
    /// Params the stream is cut with (the store's at creation).
    pub chunker: ChunkerParams,
    /// Where it is.
    pub state: TusState,
    /// Unix seconds when created.
    pub created: u64,
    /// Unix seconds of the last request that wrote to it.
    pub touched: u64,
    /// Manifest pages already stored.
    pub pages: Vec<PageRef>,
    /// Refs of the unfinished page.
    pub refs: Vec<ChunkRef>,
    /// Body bytes accepted over the wire (a resent range counts again).
    pub received: u64,
    /// Chunks this upload added to the store.
    pub new_chunks: u64,
    /// Their bytes.
    pub new_bytes: u64,
    /// The file's id, once complete.
    pub file_id: Option<Hash>,
    /// Bytes after the last cut point (stored beside the record).
    #[serde(skip)]
    tail: Tail,
}

/// The bytes after the last cut point.
#[derive(Clone, Debug, Default)]
pub(super) struct Tail {
    /// Stream position of the first byte: what the record's pages and refs cover.
    start: u64,
    /// Where the durable bytes end: the `Upload-Offset`.
    end: u64,
    /// The bytes from `start` to `end` (as read; taken by a `PATCH` while it runs).
    bytes: Vec<u8>,
}

impl Tail {
    /// The tail from `start` on out of `run` as stored, and the (touched, received) it carries.
    fn from_run(start: u64, run: Option<TailRun>) -> (Tail, u64, u64) {
        let mut tail = Tail {
            start,
            end: start,
            bytes: Vec::new(),
        };
        let Some(run) = run else {
            return (tail, 0, 0);
        };
        let run_end = run.position + run.bytes.len() as u64;
        if run.position <= start && run_end > start {
            tail.bytes = run.bytes[(start - run.position) as usize..].to_vec();
            tail.end = run_end;
        }
        match run.meta.as_slice() {
            [TAIL_VERSION, t @ ..] if t.len() == 16 => {
                let (touched, received) = t.split_at(8);
                (tail, le_u64(touched), le_u64(received))
            }
            _ => (tail, 0, 0),
        }
    }

    /// The meta a tail write carries for `up`.
    fn meta(up: &Upload) -> [u8; 17] {
        let mut m = [0u8; 17];
        m[0] = TAIL_VERSION;
        m[1..9].copy_from_slice(&up.touched.to_le_bytes());
        m[9..].copy_from_slice(&up.received.to_le_bytes());
        m
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

impl Upload {
    /// The namespace the upload belongs to.
    pub fn owner(&self) -> Namespace {
        Namespace::of_upload(self.name.as_deref())
    }

    /// The name the file gets, as its namespace writes it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().map(|k| Namespace::of_key(k).1)
    }

    /// Bytes received and kept so far: the `Upload-Offset`.
    pub fn offset(&self) -> u64 {
        if self.state == TusState::Complete {
            return self.length;
        }
        self.tail.end
    }

    /// Bytes the pages and refs cover.
    fn chunked(&self) -> u64 {
        let paged: u64 = self.pages.iter().map(|p| p.bytes).sum();
        let refs: u64 = self.refs.iter().map(|r| u64::from(r.len)).sum();
        paged + refs
    }

    /// Unix seconds after which an unfinished upload is forgotten.
    pub fn expires(&self, ttl: Duration) -> u64 {
        self.touched + ttl.as_secs()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        record::decode("tus upload", TUS_VERSION, bytes)
    }
}

/// What one `PATCH` (or a creation with a body) did.
#[derive(Debug)]
pub struct Appended {
    /// The upload afterwards, as recorded.
    pub upload: Upload,
    /// Set if the body stopped before its end; what arrived before is kept (unless a checksum
    /// was given).
    pub cut_off: Option<std::io::Error>,
    /// The upload completed with this request.
    pub completed: bool,
}

/// The tus uploads of one store.
pub struct TusUploads {
    store: Arc<dyn ChunkStore>,
    ttl: Duration,
    max_size: u64,
    /// Uploads a request is working on; one at a time per upload.
    busy: Mutex<HashSet<SessionId>>,
    freed: Condvar,
    /// Whole-file hashes of uploads whose bytes this process saw from the start, with the
    /// bytes they cover: completing needs no second pass over the file.
    hashers: Mutex<HashMap<SessionId, (u64, blake3::Hasher)>>,
    /// How to stop the request working on an upload (its body ends early), so a client that
    /// comes back after its connection stalled need not wait for the idle timeout.
    stops: Mutex<HashMap<SessionId, Stop>>,
}

/// Ends a request's body early; what arrived is kept.
pub type Stop = Box<dyn Fn() + Send>;

/// A request's way to be stopped, registered while it holds the claim.
pub(super) struct Stoppable<'a> {
    uploads: &'a TusUploads,
    id: SessionId,
}

impl<'a> Stoppable<'a> {
    fn new(uploads: &'a TusUploads, id: SessionId, stop: Stop) -> Self {
        let mut stops = crate::lock(&uploads.stops);
        stops.insert(id, stop);
        Stoppable { uploads, id }
    }
}

impl Drop for Stoppable<'_> {
    fn drop(&mut self) {
        let mut stops = crate::lock(&self.uploads.stops);
        stops.remove(&self.id);
    }
}

/// The right to work on one upload; released on drop.
struct Claim<'a> {
    uploads: &'a TusUploads,
    id: SessionId,
    /// The upload held against other processes on the store (other servers), let go after
    /// this process's claim.
    _shared: Option<Box<dyn Send>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut busy = crate::lock(&self.uploads.busy);
        busy.remove(&self.id);
        self.uploads.freed.notify_all();
    }
}

impl TusUploads {
    /// Uploads of `store` up to `max_size` bytes, forgotten after `ttl` without a write.
    pub fn new(store: Arc<dyn ChunkStore>, ttl: Duration, max_size: u64) -> Self {
        TusUploads {
            store,
            ttl,
            max_size,
            busy: Mutex::default(),
            freed: Condvar::new(),
            hashers: Mutex::default(),
            stops: Mutex::default(),
        }
    }

    /// Asks the request working on upload `id` (if any) to stop reading its body: it keeps
    /// what arrived and lets go, so the caller's request gets the upload at once.
    pub fn preempt(&self, id: SessionId) {
        let stops = crate::lock(&self.stops);
        if let Some(stop) = stops.get(&id) {
            stop();
        }
    }

    /// The largest upload accepted (`Tus-Max-Size`).
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// How long an unfinished upload lives without a write.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Waits (a few seconds at most) until no other request works on `id`.
    fn claim(&self, id: SessionId) -> Result<Claim<'_>> {
        let deadline = Instant::now() + BUSY_WAIT;
        let mut busy = crate::lock(&self.busy);
        while busy.contains(&id) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::UploadBusy(id));
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        busy.insert(id);
        drop(busy);
        // Dropped on the way out below, it lets go of this process's claim.
        let mut held = Claim {
            uploads: self,
            id,
            _shared: None,
        };
        // Then against other servers, for what is left of the wait: a request another
        // server works on (a client's retry while the cut-off first try still runs there)
        // waits for it as one on this server does.
        let left = deadline.saturating_duration_since(Instant::now());
        match self.store.lock_upload(&id.0, Some(left))? {
            Hold::Held(shared) => {
                held._shared = shared;
                Ok(held)
            }
            Hold::Busy => Err(Error::UploadBusy(id)),
        }
    }

    /// Checks that upload `id` is namespace `ns`'s: another namespace's answers exactly as an
    /// unknown one (and is not disturbed: check before stopping a request writing to it).
    ///
    /// # Errors
    /// [`Error::NoSession`]; store errors.
    pub fn check_owner(&self, id: SessionId, ns: &Namespace) -> Result<()> {
        match self.load_any(id)? {
            Some(up) if up.owner() == *ns => Ok(()),
            _ => Err(Error::NoSession(id)),
        }
    }

    fn load(&self, id: SessionId) -> Result<Upload> {
        let up = self.load_any(id)?.ok_or(Error::NoSession(id))?;
        // One past its TTL that no sweep has forgotten yet is gone all the same.
        if up.state == TusState::Uploading && up.expires(self.ttl) < crate::unix_now() {
            return Err(Error::NoSession(id));
        }
        Ok(up)
    }

    /// The record of upload `id` with its tail, expired or not.
    fn load_any(&self, id: SessionId) -> Result<Option<Upload>> {
        let Some(bytes) = self.store.get_upload(UploadKind::Tus, &id.0)? else {
            return Ok(None);
        };
        let mut up = Upload::decode(&bytes)?;
        if up.state == TusState::Uploading {
            let (tail, touched, received) = Tail::from_run(up.chunked(), self.store.tail(&id.0)?);
            up.tail = tail;
            up.touched = up.touched.max(touched);
            up.received = up.received.max(received);
        }
        Ok(Some(up))
    }

    /// Writes the record.
    fn save(&self, up: &Upload) -> Result<()> {
        let record = record::encode(TUS_VERSION, up);
        self.store.put_upload(UploadKind::Tus, &up.id.0, &record)
    }

    /// Forgets upload `id`: the tail first, so no tail outlives its record.
    fn delete(&self, id: SessionId) -> Result<()> {
        self.store.forget_tail(&id.0)?;
        self.store.delete_upload(UploadKind::Tus, &id.0)?;
        self.forget_hash(id);
        Ok(())
    }

    /// Creates an upload of `length` bytes with `metadata` (the raw `Upload-Metadata`).
    ///
    /// # Errors
    /// [`Error::TooLarge`] past the max size; [`Error::Malformed`] or [`Error::InvalidName`]
    /// for bad metadata; store errors.
    ///
    /// The upload is namespace `ns`'s, and its file is named there; `needs_name` refuses one
    /// without a name (where a file without one would be reachable by nobody in `ns`).
    pub fn create(
        &self,
        ns: &Namespace,
        needs_name: bool,
        length: u64,
        metadata: Option<&str>,
    ) -> Result<Upload> {
        if length > self.max_size {
            return Err(Error::TooLarge {
                what: "upload",
                size: length,
                limit: self.max_size,
            });
        }
        // Its manifest's page list lives in the record: keep it well inside a record's size.
        let chunker = self.store.config().chunker;
        let pages = length / u64::from(chunker.min) / PAGE_CHUNKS as u64 + 2;
        if pages * 50 > MAX_PAGE_LIST {
            return Err(Error::TooLarge {
                what: "upload (at this store's chunk sizes its manifest would not fit one record)",
                size: length,
                limit: MAX_PAGE_LIST / 50 * PAGE_CHUNKS as u64 * u64::from(chunker.min),
            });
        }
        let name = match metadata {
            Some(m) => name_from(&parse_metadata(m)?)?,
            None => None,
        };
        if name.is_none() && (needs_name || !ns.is_default()) {
            return Err(crate::upload::session::unnamed(ns));
        }
        let name = name.map(|n| ns.key(&n).into_owned());
        let now = crate::unix_now();
        let id = SessionId::generate(&length.to_le_bytes());
        let up = Upload {
            id,
            length,
            metadata: metadata.map(str::to_owned),
            name,
            chunker,
            state: TusState::Uploading,
            created: now,
            touched: now,
            pages: Vec::new(),
            refs: Vec::new(),
            received: 0,
            new_chunks: 0,
            new_bytes: 0,
            file_id: None,
            tail: Tail::default(),
        };
        self.save(&up)?;
        Ok(up)
    }

    /// Where upload `id` stands (`HEAD`); waits for a `PATCH` in progress to finish.
    ///
    /// # Errors
    /// [`Error::NoSession`] for an unknown, terminated or expired upload;
    /// [`Error::UploadBusy`]; store errors.
    pub fn info(&self, id: SessionId) -> Result<Upload> {
        let _claim = self.claim(id)?;
        self.load(id)
    }

    /// Forgets upload `id` (termination); its stored chunks stay for gc.
    ///
    /// # Errors
    /// As [`TusUploads::info`].
    pub fn terminate(&self, id: SessionId) -> Result<Upload> {
        let _claim = self.claim(id)?;
        let up = self.load(id)?;
        self.delete(id)?;
        Ok(up)
    }

    fn forget_hash(&self, id: SessionId) {
        crate::lock(&self.hashers).remove(&id);
    }

    /// Forgets unfinished uploads idle past the TTL (returned, for the expiry hook) and
    /// completed ones older than that.
    ///
    /// # Errors
    /// Store errors.
    pub fn sweep(&self) -> Result<Vec<Upload>> {
        let now = crate::unix_now();
        let mut expired = Vec::new();
        for (key, bytes) in self.store.uploads(UploadKind::Tus)? {
            let up = match Upload::decode(&bytes) {
                Ok(up) => up,
                Err(e) => {
                    // No request can resume it; its chunks go with the next gc. Its id is
                    // its key: the record itself is not read for it.
                    let id = SessionId(key);
                    tracing::warn!(upload = %id, error = %e, "damaged tus upload record dropped");
                    self.delete(id)?;
                    continue;
                }
            };
            if up.expires(self.ttl) >= now {
                continue;
            }
            let Ok(_claim) = self.claim(up.id) else {
                continue; // a request is writing to it: not idle
            };
            // Read again under the claim, with the tail (its meta has the last write time
            // when the record was not rewritten): a write may have come in between.
            let Some(up) = self.load_any(up.id)? else {
                continue;
            };
            if up.expires(self.ttl) >= now {
                continue;
            }
            self.delete(up.id)?;
            if up.state == TusState::Uploading {
                expired.push(up);
            }
        }
        Ok(expired)
    }
}
/// Every unfinished tus upload: its pages and refs are what gc must keep for it. A record that
/// does not decode is left out: no request can resume it (the sweep drops it).
///
/// # Errors
/// Store errors.
pub fn open_uploads(store: &dyn ChunkStore) -> Result<Vec<Upload>> {
    let mut out = Vec::new();
    for (_, bytes) in store.uploads(UploadKind::Tus)? {
        if let Ok(up) = Upload::decode(&bytes)
            && up.state == TusState::Uploading
        {
            out.push(up);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::upload::sink::ChunkSink;

    #[test]
    fn a_tail_counts_only_from_the_records_cut_point() {
        let run = |position, bytes: &[u8], meta: Vec<u8>| {
            Some(TailRun {
                position,
                bytes: bytes.to_vec(),
                meta,
            })
        };
        let mut meta = vec![TAIL_VERSION];
        meta.extend_from_slice(&7u64.to_le_bytes());
        meta.extend_from_slice(&9u64.to_le_bytes());
        let (t, touched, received) = Tail::from_run(8, run(6, b"xxABCD", meta.clone()));
        assert_eq!((t.bytes.as_slice(), t.start, t.end), (&b"ABCD"[..], 8, 12));
        assert_eq!((touched, received), (7, 9));
        // Starting after the cut point (a crash between record and tail): left out.
        let (t, ..) = Tail::from_run(8, run(9, b"BCD", meta.clone()));
        assert_eq!((t.bytes.len(), t.end), (0, 8));
        // Ending at or before it (cut away).
        let (t, ..) = Tail::from_run(8, run(2, b"abcdef", meta));
        assert_eq!((t.bytes.len(), t.end), (0, 8));
        // Meta of another version: bytes kept, counts not.
        let (t, touched, _) = Tail::from_run(0, run(0, b"ab", vec![2, 0]));
        assert_eq!((t.end, touched), (2, 0));
    }

    #[test]
    fn one_byte_appends_hold_only_the_tail_and_lose_no_byte() {
        let params = ChunkerParams::new(1024, 4096, 16384).unwrap();
        let config = crate::StoreConfig::new(params, 1).unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(config));
        let sink = ChunkSink::start(store.clone()).unwrap();
        let tus = TusUploads::new(store.clone(), Duration::from_secs(3600), 1 << 30);
        let data: Vec<u8> = (0..60_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let up = tus
            .create(&Namespace::default_one(), false, data.len() as u64, None)
            .unwrap();
        for at in 0..data.len() - 1 {
            let mut body = &data[at..=at];
            let done = tus
                .append(up.id, at as u64, &mut body, None, &sink, None)
                .unwrap();
            assert_eq!(done.upload.offset(), at as u64 + 1);
            // The store holds no more than the bytes after the last cut point.
            let held = store.tail(&up.id.0).unwrap().unwrap().bytes.len();
            assert!(
                held <= params.max as usize,
                "{held} bytes held at byte {at}"
            );
        }
        let at = data.len() - 1;
        let mut body = &data[at..];
        let done = tus
            .append(up.id, at as u64, &mut body, None, &sink, None)
            .unwrap();
        assert!(done.completed);
        assert_eq!(done.upload.file_id, Some(Hash::of(&data)));
        assert_eq!(store.tail(&up.id.0).unwrap(), None);
    }

    #[test]
    fn a_damaged_record_is_dropped_by_the_sweep_whatever_its_id() {
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(crate::StoreConfig::default()));
        let tus = TusUploads::new(store.clone(), Duration::from_secs(3600), 1 << 30);
        // Ids with bytes of 251 and more: the old hand-decoding of the record gave up on
        // them (bincode writes each byte raw), so such records were never dropped.
        for id in [[0xfbu8; 16], [7u8; 16]] {
            store
                .put_upload(UploadKind::Tus, &id, b"\x01\xfb\xfc damaged")
                .unwrap();
            store.write_tail(&id, 0, 0, b"tail", b"").unwrap();
        }
        tus.sweep().unwrap();
        for id in [[0xfbu8; 16], [7u8; 16]] {
            assert_eq!(store.get_upload(UploadKind::Tus, &id).unwrap(), None);
            assert_eq!(store.tail(&id).unwrap(), None);
        }
    }
}
