//! Pack storage in an S3-compatible bucket (AWS S3, SeaweedFS, Ceph RGW, MinIO, Garage, R2):
//! each pack one immutable object `PREFIX/packs/{n:016x}.pack` under a fresh random `n`, in the
//! same format as a pack file. A sink gathers its entries in memory; a small pack (a server's
//! round of chunk uploads) is written as one object when it is synced, a large one (an
//! import's) goes up as a multipart upload while it fills, [`PART_LEN`] at a time with a few
//! parts in flight, and is completed at its sync, so memory holds a few parts, not the pack.
//! After the sync the pack is full (objects are never rewritten). Reads are ranged GETs. Credentials and the endpoint come from the variables every S3 tool reads
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`). The client is async; its synchronous callers wait on it (`engine.rs`),
//! one request per call.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{
    ClientConfigKey, MultipartUpload, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::PING_TIMEOUT;
use crate::store::bucket_meta::BucketMeta;
use crate::store::engine::{spawn, wait};
use crate::store::pack::{ChunkLoc, ENTRY_HEADER_LEN, MAX_ENTRY, PACK_MAGIC, new_entry};
use crate::store::packs::{PackSink, PackStorage, PackSync};

/// Ranged reads in flight at once, per batch.
pub(super) const CONCURRENT_READS: usize = 8;

/// A sink writes its object once its entries pass this size = 96 MiB. Commits come first:
/// an import commits every 64 MiB of payload, a server's group commit takes rounds of up to
/// 64 MiB (and the request that passes it), a copy commits every 64 MiB, and each commit
/// writes its pack's object. At 64 MiB the cap was reached a block before the commit, so
/// every commit left a 64 MiB object and a tiny one, and the writer waited for the full
/// object's upload to complete on the way.
pub const BUCKET_PACK_LEN: u64 = 96 << 20;
/// A pack that grows past this = 8 MiB goes up in parts of about this size while it fills.
pub const PART_LEN: usize = 8 << 20;
/// Parts of one pack in flight at once: the sink waits for the oldest before sending more.
const PARTS_IN_FLIGHT: usize = 3;
/// A pack read whole (fsck) is read in ranged GETs of this many bytes = 8 MiB, ...
const READ_ALL_PART: u64 = 8 << 20;
/// ... this many in flight, so a check holds a few parts of a pack, not the whole object, and
/// its reads overlap the hashing.
const READ_ALL_AHEAD: usize = 3;

/// Packs in one bucket under one prefix.
pub struct BucketPacks {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn ObjectStore>,
    /// `s3://BUCKET[/PREFIX]`, for messages.
    url: String,
    /// The key prefix, with no slash at either end (empty for the bucket's root).
    prefix: String,
}

impl Inner {
    pub(super) fn key(&self, what: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(what)
        } else {
            Key::from(format!("{}/{what}", self.prefix))
        }
    }

    fn pack_key(&self, pack: u64) -> Key {
        self.key(&format!("packs/{pack:016x}.pack"))
    }

    /// Deletes objects (one that is gone already counts as deleted).
    pub(super) fn delete(&self, keys: Vec<Key>) -> Result<()> {
        let Some(first) = keys.first().cloned() else {
            return Ok(());
        };
        let stream = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        let results: Vec<object_store::Result<Key>> =
            wait(self.store.delete_stream(stream).collect())?;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("cannot delete", &first, e)),
            }
        }
        Ok(())
    }

    pub(super) fn where_(&self, key: &Key) -> PathBuf {
        let bucket = self.url.trim_start_matches("s3://");
        let bucket = bucket.split('/').next().unwrap_or(bucket);
        PathBuf::from(format!("s3://{bucket}/{key}"))
    }

    /// The error of `action` on `key`: an I/O error naming the object when the object is
    /// not there (or is there already), else the bucket's own words; a bucket that did not
    /// answer, or answered 5xx after the client's retries, is unreachable (503: try again).
    pub(super) fn error(&self, action: &'static str, key: &Key, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            _ => {
                let unreachable = matches!(e, object_store::Error::Generic { .. });
                let hint = match &e {
                    _ if unreachable => {
                        "; check AWS_ENDPOINT_URL and that the object store is up, then try again"
                    }
                    object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. } => {
                        "; check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS profile)"
                    }
                    _ => "",
                };
                return Error::Engine {
                    action,
                    at: self.where_(key).display().to_string(),
                    unreachable,
                    detail: format!("{}{hint}", one_line(&e)),
                };
            }
        };
        Error::io(action, self.where_(key))(std::io::Error::new(kind, e))
    }
}

/// The client's words for `e` on one line: an S3 error body (XML) shortened to its code and
/// message. (Its `Display` includes its causes already.)
fn one_line(e: &object_store::Error) -> String {
    let text = e.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let from = text.find(&open)? + open.len();
        let len = text[from..].find("</")?;
        Some(text[from..from + len].to_owned())
    };
    let mut out = match text.find("<?xml").or_else(|| text.find("<Error>")) {
        Some(at) => {
            let head = text[..at].trim_end().trim_end_matches(':').to_owned();
            match (tag("Code"), tag("Message")) {
                (Some(code), Some(message)) => format!("{head}: {code}: {message}"),
                _ => head,
            }
        }
        None => text,
    };
    out.retain(|c| c != '\r');
    out.replace('\n', " ")
}

impl BucketPacks {
    /// The packs of the store at `url` (`s3://BUCKET[/PREFIX]`), with credentials and endpoint
    /// from the environment.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] for a URL that is not `s3://…` or a client that cannot be made.
    pub fn open(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::InvalidParams(format!(
                "{url:?} is not a bucket URL: give s3://BUCKET[/PREFIX]"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidParams(format!(
                "{url:?} names no bucket: give s3://BUCKET[/PREFIX]"
            )));
        }
        // A bucket that does not answer is reported within seconds, not after minutes of
        // the client's default retries; five retries (0.1 s doubling: about 3 s) ride over
        // an object store's restart settling (SeaweedFS answers 500 to reads for a moment).
        let retry = RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .build()
            .map_err(|e| Error::InvalidParams(format!("cannot use bucket {url}: {e}")))?;
        Ok(BucketPacks {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                url: url.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            }),
        })
    }

    /// The store's URL, `s3://BUCKET[/PREFIX]`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The bucket's copy of the store's metadata (`bucket_meta.rs`).
    pub fn meta(&self) -> BucketMeta {
        BucketMeta::new(self.inner.clone())
    }

    /// Bytes of object `name` under the prefix (a store's own record, not a pack), if it
    /// exists.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn get(&self, name: &str) -> Result<Option<bytes::Bytes>> {
        self.get_all("cannot read", &self.inner.key(name))
    }

    /// Writes object `name` under the prefix unless one is there already (objects are never
    /// replaced). Returns false if it was there.
    ///
    /// # Errors
    /// The bucket's errors.
    pub fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool> {
        let i = &self.inner;
        let key = i.key(name);
        let opts = PutOptions::from(PutMode::Create);
        match wait(i.store.put_opts(&key, PutPayload::from(bytes), opts))? {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(i.error("cannot write", &key, e)),
        }
    }

    /// The bytes a ranged read of `len` bytes at `offset` of `key` got, or `None` if the
    /// object ends before them.
    fn ranged(
        &self,
        key: &Key,
        offset: u64,
        len: u64,
        got: object_store::Result<bytes::Bytes>,
    ) -> Result<Option<bytes::Bytes>> {
        let i = &self.inner;
        match got {
            Ok(b) => Ok((b.len() as u64 >= len).then_some(b)),
            Err(e) => {
                // A range past the end is an error to the client; tell it apart by the size.
                let size = wait(i.store.head(key))?.map(|m| m.size);
                match size {
                    Ok(size) if offset + len > size => Ok(None),
                    _ => Err(i.error("cannot read pack", key, e)),
                }
            }
        }
    }

    /// Bytes of object `key`, if it exists; `action` names the read in an error.
    fn get_all(&self, action: &'static str, key: &Key) -> Result<Option<bytes::Bytes>> {
        let i = &self.inner;
        let got = wait(async {
            match i.store.get(key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        got.map_err(|e| i.error(action, key, e))
    }
}

impl PackStorage for BucketPacks {
    fn ping(&self) -> Result<()> {
        let i = &self.inner;
        let key = i.key("hoard-store.json");
        // Read, not just looked up: an object store can list an object whose bytes it cannot
        // serve yet (SeaweedFS's filer answers before its volumes are back after a restart).
        let read = async { i.store.get(&key).await?.bytes().await };
        match wait(tokio::time::timeout(PING_TIMEOUT, read))? {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(i.error("cannot reach the object store at", &key, e)),
            Err(_) => Err(Error::no_answer(
                "cannot reach the object store at",
                i.where_(&key).display().to_string(),
                PING_TIMEOUT,
            )),
        }
    }

    fn create(&self) -> Result<Box<dyn PackSink>> {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(&PACK_MAGIC);
        Ok(Box::new(BucketSink {
            inner: self.inner.clone(),
            // A fresh name: pack names are never reused.
            id: u64::from_le_bytes(
                Hash::fresh(b"pack").as_bytes()[..8]
                    .try_into()
                    .expect("8 bytes"),
            ),
            buf,
            sent: 0,
            upload: None,
            parts: VecDeque::new(),
            synced: None,
        }))
    }

    fn read_at(&self, pack: u64, offset: u64, bufs: &mut [&mut [u8]]) -> Result<bool> {
        let i = &self.inner;
        let key = i.pack_key(pack);
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let got = wait(i.store.get_range(&key, offset..offset + len))?;
        let Some(bytes) = self.ranged(&key, offset, len, got)? else {
            return Ok(false);
        };
        let mut at = 0;
        for b in bufs {
            b.copy_from_slice(&bytes[at..at + b.len()]);
            at += b.len();
        }
        Ok(true)
    }

    fn read_many(&self, reads: &[(u64, u64, u64)]) -> Result<Vec<Option<bytes::Bytes>>> {
        let i = &self.inner;
        let gets = reads.iter().map(|&(pack, offset, len)| {
            let key = i.pack_key(pack);
            async move {
                let got = i.store.get_range(&key, offset..offset + len).await;
                (key, got)
            }
        });
        let got: Vec<_> = wait(
            futures_util::stream::iter(gets)
                .buffered(CONCURRENT_READS)
                .collect(),
        )?;
        reads
            .iter()
            .zip(got)
            .map(|(&(_, offset, len), (key, got))| self.ranged(&key, offset, len, got))
            .collect()
    }

    fn batches_reads(&self) -> bool {
        true
    }

    fn read_all(&self, pack: u64) -> Result<Option<Box<dyn std::io::Read + Send>>> {
        let i = &self.inner;
        let key = i.pack_key(pack);
        let len = match wait(i.store.head(&key))? {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(i.error("cannot read pack", &key, e)),
        };
        Ok(Some(Box::new(PartsReader {
            inner: i.clone(),
            key,
            len,
            next: 0,
            ahead: VecDeque::new(),
            current: bytes::Bytes::new(),
        })))
    }

    fn list(&self) -> Result<Vec<(u64, u64)>> {
        let i = &self.inner;
        let prefix = i.key("packs");
        let metas: Vec<object_store::ObjectMeta> = wait(i.store.list(Some(&prefix)).try_collect())?
            .map_err(|e| i.error("cannot list packs in", &prefix, e))?;
        let mut out: Vec<(u64, u64)> = metas
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let hex = name.strip_suffix(".pack").filter(|h| h.len() == 16)?;
                Some((u64::from_str_radix(hex, 16).ok()?, m.size))
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn delete(&self, packs: &[u64]) -> Result<()> {
        let i = &self.inner;
        i.delete(packs.iter().map(|&p| i.pack_key(p)).collect())
    }

    fn quarantine(&self, id: &Hash, loc: &ChunkLoc) -> Result<Option<PathBuf>> {
        let i = &self.inner;
        let key = i.pack_key(loc.pack);
        let Some(size) = (match wait(i.store.head(&key))? {
            Ok(m) => Some(m.size),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(i.error("cannot read pack", &key, e)),
        }) else {
            return Ok(None);
        };
        let want = (ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len.min(MAX_ENTRY)))
            .min(size.saturating_sub(loc.offset));
        let bytes = wait(i.store.get_range(&key, loc.offset..loc.offset + want))?
            .map_err(|e| i.error("cannot read pack", &key, e))?;
        let dst = i.key(&format!(
            "quarantine/{id}-{:016x}-{}.entry",
            loc.pack, loc.offset
        ));
        wait(i.store.put(&dst, PutPayload::from_bytes(bytes)))?
            .map_err(|e| i.error("cannot write", &dst, e))?;
        Ok(Some(i.where_(&i.key("quarantine"))))
    }
}

/// Gathers one pack's entries; sends them in parts once the pack is large, and writes (or
/// completes) the object at its sync.
struct BucketSink {
    inner: Arc<Inner>,
    id: u64,
    /// The pack's bytes after those sent as parts.
    buf: Vec<u8>,
    /// Bytes of the pack sent as parts.
    sent: u64,
    /// The multipart upload, once the pack passed [`PART_LEN`].
    upload: Option<Box<dyn MultipartUpload>>,
    /// Parts in flight, oldest first.
    parts: VecDeque<PartTask>,
    /// Length of the object written, once it was.
    synced: Option<u64>,
}

type PartTask = tokio::task::JoinHandle<object_store::Result<()>>;

/// The outcome of a spawned request, as the client's error.
fn joined<T>(
    r: std::result::Result<object_store::Result<T>, tokio::task::JoinError>,
) -> object_store::Result<T> {
    r.unwrap_or_else(|e| {
        Err(object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })
    })
}

impl BucketSink {
    fn len(&self) -> u64 {
        self.sent + self.buf.len() as u64
    }

    /// Sends what `buf` holds as the next part (starting the upload first), after waiting for
    /// the oldest part if too many are in flight.
    fn send_part(&mut self) -> Result<()> {
        let i = &self.inner;
        let key = i.pack_key(self.id);
        let fail = |e| i.error("cannot write pack", &key, e);
        let upload = match &mut self.upload {
            Some(u) => u,
            None => self
                .upload
                .insert(wait(i.store.put_multipart(&key))?.map_err(fail)?),
        };
        while self.parts.len() >= PARTS_IN_FLIGHT {
            let oldest = self.parts.pop_front().expect("parts in flight");
            joined(wait(oldest)?).map_err(fail)?;
        }
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_LEN + (1 << 20)));
        self.sent += part.len() as u64;
        let put = upload.put_part(PutPayload::from(part));
        self.parts.push_back(spawn(put)?);
        Ok(())
    }
}

impl PackSink for BucketSink {
    fn pack(&self) -> u64 {
        self.id
    }

    fn full(&self) -> bool {
        self.synced.is_some() || self.len() >= BUCKET_PACK_LEN
    }

    fn append(
        &mut self,
        id: &Hash,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<ChunkLoc> {
        let key = self.inner.pack_key(self.id);
        if self.synced.is_some() {
            return Err(Error::io("cannot append to pack", self.inner.where_(&key))(
                std::io::Error::other("the pack's object is written; start a new pack"),
            ));
        }
        let (header, loc) = new_entry(self.id, self.len(), id, codec, raw_len, payload)
            .map_err(Error::io("cannot write pack", self.inner.where_(&key)))?;
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(payload);
        if self.buf.len() >= PART_LEN {
            self.send_part()?;
        }
        Ok(loc)
    }

    fn start_sync(&mut self) -> Result<Box<dyn PackSync>> {
        if self.synced.is_some() {
            // Written already, and nothing can have been appended since.
            return Ok(Box::new(Written(None)));
        }
        if self.upload.is_some() && !self.buf.is_empty() {
            self.send_part()?;
        }
        self.synced = Some(self.len());
        let inner = self.inner.clone();
        let key = inner.pack_key(self.id);
        let put = match self.upload.take() {
            // Complete the multipart upload once its parts are in.
            Some(mut upload) => {
                let parts = std::mem::take(&mut self.parts);
                spawn(async move {
                    for p in parts {
                        if let Err(e) = joined(p.await) {
                            let _ = upload.abort().await;
                            return Err(e);
                        }
                    }
                    upload.complete().await
                })?
            }
            None => {
                let bytes = bytes::Bytes::from(std::mem::take(&mut self.buf));
                let store = inner.store.clone();
                let key = key.clone();
                spawn(async move {
                    // A fresh name; Create refuses to replace an object where the engine
                    // enforces it.
                    let opts = PutOptions::from(PutMode::Create);
                    store
                        .put_opts(&key, PutPayload::from_bytes(bytes), opts)
                        .await
                })?
            }
        };
        Ok(Box::new(Written(Some((inner, key, put)))))
    }

    fn abandon(self: Box<Self>) {
        // A small pack has sent nothing. A multipart upload is aborted (best effort: an
        // upload left behind is never completed, so never an object).
        if let Some(mut upload) = self.upload {
            let _ = spawn(async move { upload.abort().await });
        }
    }
}

type PutTask = tokio::task::JoinHandle<object_store::Result<object_store::PutResult>>;

/// A pack object read front to back in ranged GETs (see [`READ_ALL_PART`]). A failed GET is
/// an I/O error of kind `Other` carrying the store's [`Error`], so a reader can tell the
/// object store failing from the pack ending early (`UnexpectedEof`).
struct PartsReader {
    inner: Arc<Inner>,
    key: Key,
    len: u64,
    /// Where the next GET starts.
    next: u64,
    ahead: VecDeque<tokio::task::JoinHandle<object_store::Result<bytes::Bytes>>>,
    current: bytes::Bytes,
}

impl PartsReader {
    fn fill(&mut self) -> Result<()> {
        while self.ahead.len() < READ_ALL_AHEAD && self.next < self.len {
            let range = self.next..(self.next + READ_ALL_PART).min(self.len);
            self.next = range.end;
            let (store, key) = (self.inner.store.clone(), self.key.clone());
            self.ahead
                .push_back(spawn(async move { store.get_range(&key, range).await })?);
        }
        Ok(())
    }
}

impl std::io::Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            self.fill().map_err(std::io::Error::other)?;
            let Some(part) = self.ahead.pop_front() else {
                return Ok(0);
            };
            self.current = joined(wait(part).map_err(std::io::Error::other)?).map_err(|e| {
                std::io::Error::other(self.inner.error("cannot read pack", &self.key, e))
            })?;
            self.fill().map_err(std::io::Error::other)?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// An object write in flight (or none, for a pack written already).
struct Written(Option<(Arc<Inner>, Key, PutTask)>);

impl PackSync for Written {
    fn wait(self: Box<Self>) -> Result<()> {
        let Some((inner, key, put)) = self.0 else {
            return Ok(());
        };
        match wait(put)? {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(inner.error("cannot write pack", &key, e)),
            Err(e) => Err(Error::io("cannot write pack", inner.where_(&key))(
                std::io::Error::other(e),
            )),
        }
    }
}
