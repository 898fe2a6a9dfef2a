//! A `PATCH`'s bytes into an upload: read in steps, cut into chunks as they arrive (a chunk is
//! final once the chunker's max follows its start), the new ones stored through the chunk sink,
//! checkpointed (record, then tail), and the file completed when the last byte is in.

use std::collections::HashSet;
use std::io::Read;
use std::sync::mpsc;

use bytes::Bytes;

use crate::chunker::Cutter;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::import;
use crate::manifest::ManifestBuilder;
use crate::names;
use crate::namespace::Namespace;
use crate::restore;
use crate::store::{ChunkStore, Pin};
use crate::upload::session::SessionId;
use crate::upload::sink::{ChunkSink, Verified};
use crate::upload::tus::headers::{Checksum, Digester};
use crate::upload::tus::{
    Appended, READ_BYTES, STEP_BYTES, Stop, Stoppable, Tail, TusState, TusUploads, Upload,
};

impl TusUploads {
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
        let (mut manifest, _) = import::seal(store, builder, placeholder, up.chunker, &run.pin)?;
        manifest.file_id = match run.hasher.take() {
            Some(h) => Hash::from(h.finalize()),
            // The server restarted during the upload: hash the file back out of the store.
            None => restore::hash_file(store, &manifest)?,
        };
        store.put_manifest(&manifest)?;
        if let Some(key) = &up.name {
            let (ns, name) = Namespace::of_key(key);
            names::record_in(store, &ns, name, &manifest)?;
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
        if let Some(h) = &mut self.hasher {
            h.update(&self.buf[..pos]);
        }
        let mut seen = HashSet::new();
        // Held until the sink has recorded this step's chunks (deltas name their bases then).
        let bases = self.store.guard().pin();
        let (ids, new) =
            import::new_chunks(self.store, &self.buf, &spans, &self.pin, &bases, |id| {
                seen.insert(*id)
            })?;
        if !new.is_empty() {
            let buf = &self.buf;
            let verified: Vec<Verified> = new
                .into_iter()
                .map(|c| {
                    let raw = &buf[c.span.clone()];
                    let payload = match c.encoded {
                        Some(e) => Bytes::from(e),
                        None => Bytes::copy_from_slice(raw),
                    };
                    Verified {
                        id: c.id,
                        codec: c.codec,
                        raw_len: raw.len() as u32,
                        payload,
                        raw: Bytes::new(),
                        features: c.features,
                    }
                })
                .collect();
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
        import::add_refs(self.store, &mut self.builder, &ids, &spans, &self.pin)?;
        self.buf.drain(..pos);
        Ok(())
    }
}
