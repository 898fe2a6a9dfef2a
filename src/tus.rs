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
//! the local store appends them to a file, see `store/tails.rs`). A checkpoint writes only
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
use std::io::Read;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

use crate::chunker::Cutter;
use crate::codec::{self, Codec};
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, ManifestBuilder, PAGE_CHUNKS, PageRef};
use crate::names;
use crate::record;
use crate::restore;
use crate::session::SessionId;
use crate::sink::{ChunkSink, Verified};
use crate::store::{ChunkStore, Pin, TailRun, UploadKind};

/// Format version of tus upload records.
const TUS_VERSION: u8 = 1;
/// Bytes buffered before they are cut and stored = 8 MiB; also the most a server kill in the
/// middle of a `PATCH` makes the client send again. With the compressed copies of the new
/// chunks, a `PATCH` holds about twice this in memory.
const STEP_BYTES: usize = 8 << 20;
/// Bytes read from the body at a time.
const READ_BYTES: usize = 1 << 20;
/// Longest `Upload-Metadata` header kept.
const MAX_METADATA: usize = 4096;
/// How long a request waits for another one on the same upload to finish (after asking it to
/// stop: see [`TusUploads::preempt`]).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// Most bytes of page refs a record may come to hold (half the record limit).
const MAX_PAGE_LIST: u64 = 8 << 20;
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
    /// The name the file gets (metadata `filename`, else `name`).
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
struct Tail {
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

/// A checksum algorithm of the checksum extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-1 (what every tus client offers).
    Sha1,
    /// BLAKE3 (hoard's own hash).
    Blake3,
}

/// Algorithms for `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,blake3";

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// An `Upload-Checksum`: the algorithm and the digest the body must have.
#[derive(Clone, Debug)]
pub struct Checksum {
    algorithm: Algorithm,
    digest: Vec<u8>,
}

impl Checksum {
    /// Parses `ALGORITHM BASE64DIGEST`.
    ///
    /// # Errors
    /// [`Error::Malformed`] for an unknown algorithm or a bad digest.
    pub fn parse(header: &str) -> Result<Self> {
        let bad = |detail: String| Error::Malformed {
            what: "Upload-Checksum header",
            detail,
        };
        let (algo, digest) = header
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("expected `ALGORITHM BASE64`".into()))?;
        let (algorithm, len) = match algo {
            "sha1" => (Algorithm::Sha1, 20),
            "blake3" => (Algorithm::Blake3, 32),
            other => {
                return Err(bad(format!(
                    "unsupported algorithm {other:?}; this server offers {CHECKSUM_ALGORITHMS}"
                )));
            }
        };
        let digest = base64::engine::general_purpose::STANDARD
            .decode(digest.trim())
            .map_err(|e| bad(format!("digest is not base64: {e}")))?;
        if digest.len() != len {
            return Err(bad(format!(
                "a {algo} digest has {len} bytes, not {}",
                digest.len()
            )));
        }
        Ok(Checksum { algorithm, digest })
    }
}

enum Digester {
    Sha1(sha1::Sha1),
    Blake3(Box<blake3::Hasher>),
}

impl Digester {
    fn new(a: Algorithm) -> Self {
        match a {
            Algorithm::Sha1 => Digester::Sha1(sha1::Sha1::new()),
            Algorithm::Blake3 => Digester::Blake3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha1(h) => h.update(data),
            Digester::Blake3(h) => {
                h.update(data);
            }
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Digester::Sha1(h) => h.finalize().to_vec(),
            Digester::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// Parses `Upload-Metadata` (`key base64, key base64, key`) into keys and decoded values.
///
/// # Errors
/// [`Error::Malformed`] for an empty or repeated key or a value that is not base64.
pub fn parse_metadata(header: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |detail: String| Error::Malformed {
        what: "Upload-Metadata header",
        detail,
    };
    if header.len() > MAX_METADATA {
        return Err(bad(format!("longer than {MAX_METADATA} bytes")));
    }
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for pair in header.split(',') {
        let pair = pair.trim_start();
        if pair.trim().is_empty() {
            continue;
        }
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.is_ascii() {
            return Err(bad(format!("bad key {key:?}")));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(bad(format!("key {key:?} appears twice")));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| bad(format!("value of {key:?} is not base64: {e}")))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// The name a file gets from its metadata: `filename`, else `name` (Uppy sends both).
fn name_from(metadata: &[(String, Vec<u8>)]) -> Result<Option<String>> {
    let value = ["filename", "name"]
        .iter()
        .find_map(|key| metadata.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v);
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let name = String::from_utf8(value.clone()).map_err(|_| Error::Malformed {
        what: "Upload-Metadata header",
        detail: "filename is not UTF-8".into(),
    })?;
    names::validate(&name)?;
    Ok(Some(name))
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
struct Stoppable<'a> {
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
                return Err(Error::UploadBusy(id.to_string()));
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        busy.insert(id);
        Ok(Claim { uploads: self, id })
    }

    fn load(&self, id: SessionId) -> Result<Upload> {
        let up = self
            .load_any(id)?
            .ok_or_else(|| Error::NoSession(id.to_string()))?;
        // One past its TTL that no sweep has forgotten yet is gone all the same.
        if up.state == TusState::Uploading && up.expires(self.ttl) < crate::unix_now() {
            return Err(Error::NoSession(id.to_string()));
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
    pub fn create(&self, length: u64, metadata: Option<&str>) -> Result<Upload> {
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

    /// Appends `body` to upload `id` at `offset` (`PATCH`, or the body of a creation);
    /// completes the upload when its last byte arrives. New chunks go through `sink`.
    ///
    /// A body that stops early is not an error: what arrived is kept (unless `checksum` is
    /// given) and [`Appended::cut_off`] says why it stopped.
    ///
    /// # Errors
    /// [`Error::OffsetMismatch`]; [`Error::ChecksumMismatch`] (nothing kept);
    /// [`Error::TooLarge`] for bytes past the length (those before it are kept);
    /// [`Error::NoSession`]; [`Error::UploadBusy`]; store errors.
    pub fn append(
        &self,
        id: SessionId,
        offset: u64,
        body: &mut dyn Read,
        checksum: Option<Checksum>,
        sink: &ChunkSink,
        stop: Option<Stop>,
    ) -> Result<Appended> {
        let _claim = self.claim(id)?;
        let _stoppable = stop.map(|s| Stoppable::new(self, id, s));
        let mut up = self.load(id)?;
        if up.state == TusState::Complete && offset == up.length {
            // Nothing is left to send; a byte more would be past the length.
            let mut one = [0u8; 1];
            if body.read(&mut one).unwrap_or(0) > 0 {
                return Err(too_long(&up));
            }
            return Ok(Appended {
                upload: up,
                cut_off: None,
                completed: false,
            });
        }
        if offset != up.offset() {
            return Err(Error::OffsetMismatch {
                expected: up.offset(),
                got: offset,
            });
        }
        let kept = crate::lock(&self.hashers)
            .remove(&id)
            .filter(|(upto, _)| *upto == up.tail.start)
            .map(|(_, h)| h);
        let hasher = if offset == 0 {
            Some(blake3::Hasher::new())
        } else {
            kept
        };
        let mut run = Run {
            store: &*self.store,
            sink,
            cutter: Cutter::new(up.chunker),
            builder: ManifestBuilder::resume(
                std::mem::take(&mut up.pages),
                std::mem::take(&mut up.refs),
            ),
            buf: std::mem::take(&mut up.tail.bytes),
            hasher,
            pin: self.store.guard().pin(),
            accepted: 0,
            new_chunks: 0,
            new_bytes: 0,
        };
        let room = up.length - offset;
        // Cut once a step's worth is buffered, and never less than two chunks' worth, so
        // every step cuts something.
        let step_at = STEP_BYTES.max(2 * run.cutter.max() as usize);
        let mut digest = checksum.as_ref().map(|c| Digester::new(c.algorithm));
        let mut total = 0u64;
        let mut cut_off = None;
        let mut overflow = false;
        let mut piece = vec![0u8; READ_BYTES];
        loop {
            let n = match body.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    cut_off = Some(e);
                    break;
                }
            };
            let keep = n.min((room - total) as usize);
            overflow = keep < n;
            if let Some(d) = &mut digest {
                d.update(&piece[..n]);
            }
            run.buf.extend_from_slice(&piece[..keep]);
            run.accepted += keep as u64;
            total += keep as u64;
            if overflow {
                break;
            }
            // The last byte is never checkpointed here: a record at offset = length would
            // tell a client the upload is done before the file is.
            if run.buf.len() >= step_at && total < room {
                run.step(false)?;
                if checksum.is_none() {
                    self.checkpoint(&mut up, &mut run)?;
                }
            }
        }
        if let (Some(c), Some(d)) = (&checksum, digest) {
            // All or nothing: the record was not touched; what this request stored is garbage
            // (and the whole-file hash, which went past the record, is dropped with `run`).
            if cut_off.is_some() {
                let upload = self.load(id)?;
                return Ok(Appended {
                    upload,
                    cut_off,
                    completed: false,
                });
            }
            if overflow || d.finish() != c.digest {
                return Err(if overflow {
                    too_long(&up)
                } else {
                    Error::ChecksumMismatch {
                        algorithm: c.algorithm.name(),
                    }
                });
            }
        }
        if overflow {
            // More bytes than Upload-Length: refused (413), not cut silently. What the last
            // checkpoint holds stays; HEAD says where to resume.
            tracing::warn!(upload = %id, "PATCH body went past Upload-Length; refused");
            return Err(too_long(&up));
        }
        let completed = run.builder.bytes() + run.buf.len() as u64 == up.length;
        if completed {
            self.complete(&mut up, run)?;
        } else {
            run.step(false)?;
            self.checkpoint(&mut up, &mut run)?;
            // The whole-file hash so far is kept for the next request on this upload.
            if let Some(h) = run.hasher.take() {
                let covered = run.builder.bytes();
                let mut hashers = crate::lock(&self.hashers);
                hashers.insert(id, (covered, h));
            }
        }
        Ok(Appended {
            upload: up,
            cut_off,
            completed,
        })
    }

    /// Makes what `run` has received so far durable: the record if the stream was cut, then
    /// the bytes that arrived since the last checkpoint (see the module notes).
    fn checkpoint(&self, up: &mut Upload, run: &mut Run<'_>) -> Result<()> {
        run.count_into(up);
        let start = run.builder.bytes();
        let end = start + run.buf.len() as u64;
        if start != up.tail.start {
            let (pages, refs) = run.builder.parts();
            up.pages = pages.to_vec();
            up.refs = refs.to_vec();
            self.save(up)?;
            up.tail.start = start;
        }
        // Bytes the tail does not hold yet (a cut may have passed its end).
        let from = up.tail.end.max(start);
        if end > from {
            let fresh = &run.buf[(from - start) as usize..];
            self.store
                .write_tail(&up.id.0, start, from, fresh, &Tail::meta(up))?;
        }
        up.tail.end = end;
        // Up to here the pin kept gc off this request's chunks; the record now does.
        run.pin = self.store.guard().pin();
        Ok(())
    }

    /// Stores the last chunks, the manifest and the name; marks the upload complete.
    fn complete(&self, up: &mut Upload, mut run: Run<'_>) -> Result<()> {
        run.step(true)?;
        let store = &*self.store;
        let placeholder = Hash::from_bytes([0u8; 32]);
        let builder = std::mem::take(&mut run.builder);
        let (mut manifest, last) = builder.finish(placeholder, up.chunker);
        if let Some(p) = last {
            store.put_page_pinned(&p, &run.pin)?;
        }
        manifest.file_id = match run.hasher.take() {
            Some(h) => Hash::from(h.finalize()),
            // The server restarted during the upload: hash the file back out of the store.
            None => restore::hash_file(store, &manifest)?,
        };
        store.put_manifest(&manifest)?;
        if let Some(name) = &up.name {
            names::record(store, name, &manifest)?;
        }
        up.state = TusState::Complete;
        up.file_id = Some(manifest.file_id);
        up.pages.clear();
        up.refs.clear();
        up.tail = Tail::default();
        run.count_into(up);
        self.save(up)?;
        self.store.forget_tail(&up.id.0)?;
        self.forget_hash(up.id);
        Ok(())
    }
}

fn too_long(up: &Upload) -> Error {
    Error::TooLarge {
        what: "PATCH body (past Upload-Length; HEAD gives the offset to resume from)",
        size: up.length + 1,
        limit: up.length,
    }
}

/// One request's work on an upload: the bytes not yet cut, the manifest so far.
struct Run<'a> {
    store: &'a dyn ChunkStore,
    sink: &'a ChunkSink,
    cutter: Cutter,
    builder: ManifestBuilder,
    /// Bytes after the last cut point.
    buf: Vec<u8>,
    /// Hash of every byte before `buf`, if this process saw them all.
    hasher: Option<blake3::Hasher>,
    /// Keeps gc off what this request looked up and stored until the record holds it.
    pin: Pin,
    /// Body bytes, chunks and chunk bytes added since the last checkpoint.
    accepted: u64,
    new_chunks: u64,
    new_bytes: u64,
}

impl Run<'_> {
    /// Moves the counts since the last checkpoint into `up`, and the time of this write.
    fn count_into(&mut self, up: &mut Upload) {
        up.received += std::mem::take(&mut self.accepted);
        up.new_chunks += std::mem::take(&mut self.new_chunks);
        up.new_bytes += std::mem::take(&mut self.new_bytes);
        up.touched = crate::unix_now();
    }

    /// Cuts every final chunk out of `buf` (all of it at the end of the stream), stores the
    /// ones the store lacks, and adds them to the manifest.
    fn step(&mut self, end: bool) -> Result<()> {
        let max = self.cutter.max() as usize;
        let mut spans = Vec::new();
        let mut pos = 0;
        while pos < self.buf.len() && (end || self.buf.len() - pos >= max) {
            let n = self.cutter.next_len(&self.buf[pos..]);
            spans.push(pos..pos + n);
            pos += n;
        }
        if spans.is_empty() {
            return Ok(());
        }
        let buf = &self.buf;
        let ids: Vec<Hash> = spans
            .par_iter()
            .map(|s| Hash::of(&buf[s.clone()]))
            .collect();
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..pos]);
        }
        let missing = self.store.missing_pinned(&ids, &self.pin)?;
        let mut seen = HashSet::new();
        let new: Vec<(Hash, std::ops::Range<usize>)> = ids
            .iter()
            .zip(&spans)
            .zip(&missing)
            .filter(|((id, _), m)| **m && seen.insert(**id))
            .map(|((id, s), _)| (*id, s.clone()))
            .collect();
        let level = self.store.config().level;
        let verified: Vec<Verified> = new
            .par_iter()
            .map(|(id, s)| {
                let raw = &buf[s.clone()];
                let (codec, payload) = match codec::compress(raw, level) {
                    Some(z) => (Codec::Zstd, Bytes::from(z)),
                    None => (Codec::Raw, Bytes::copy_from_slice(raw)),
                };
                Verified {
                    id: *id,
                    codec,
                    raw_len: raw.len() as u32,
                    payload,
                    raw: Bytes::new(),
                }
            })
            .collect();
        if !verified.is_empty() {
            let (tx, rx) = mpsc::channel();
            self.sink.submit(
                verified,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            let report = rx
                .recv()
                .map_err(|_| Error::stage_stopped("chunk sink stopped"))??;
            self.new_chunks += report.new_chunks;
            self.new_bytes += report.new_bytes;
        }
        for (id, s) in ids.iter().zip(&spans) {
            let r = ChunkRef {
                id: *id,
                len: s.len() as u32,
            };
            if let Some(p) = self.builder.push(r) {
                self.store.put_page_pinned(&p, &self.pin)?;
            }
        }
        self.buf.drain(..pos);
        Ok(())
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
        let up = tus.create(data.len() as u64, None).unwrap();
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
