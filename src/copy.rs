//! Copy: files from one store to another by content, with their names' history — the way a
//! store moves to a bucket, comes home from one, or goes from bucket to bucket.
//!
//! For each file: its pages → which chunks does the target lack? → read those from the source
//! (a batch at a time, in few requests where the source is remote) → decode and BLAKE3 == id
//! (over the rayon pool) → append them to the target as stored (no second compression; a
//! source's delta comes out as the chunk's bytes and is compressed again, and a target that
//! keeps deltas runs its delta stage on them, `delta.rs`) → commit every 64 MiB → the pages → the manifest once every chunk is committed. Names come
//! last: each source version the target's history lacks is appended, oldest first, with its
//! original time. A copy cut short leaves committed chunks and whole files in the target and
//! nothing pointing at a part; running it again sends only what is still missing.

use std::borrow::Cow;
use std::collections::HashSet;

use rayon::prelude::*;
use serde::Serialize;

use crate::codec::{self, Codec};
use crate::delta;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest};
use crate::restore::{verify_payload, walk_pages};
use crate::store::{ChunkStore, NameRecord, PendingCommit, StoredChunk};

/// Decoded bytes read from the source per batch = 8 MiB.
const BATCH_BYTES: u64 = 8 << 20;
/// Encoded bytes appended to the target before it commits = 64 MiB.
const COMMIT_BYTES: u64 = 64 << 20;

/// What [`copy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Files (manifests) copied.
    pub files: u64,
    /// Files the target held already.
    pub files_present: u64,
    /// Chunks copied.
    pub chunks: u64,
    /// Chunk references the target could serve already (counted once per file).
    pub chunks_present: u64,
    /// Stored (encoded) bytes of the chunks copied: what crossed to the target.
    pub bytes: u64,
    /// Decoded bytes of those chunks.
    pub raw_bytes: u64,
    /// Names given new versions.
    pub names: u64,
    /// Versions appended to names.
    pub versions: u64,
    /// Versions not copied because the source lacks their file (fsck of the source names
    /// them).
    pub skipped_versions: u64,
}

/// What a copy will take from its source: names with their histories, and the files of
/// every version (oldest first, each once).
pub struct Plan {
    records: Vec<(String, NameRecord)>,
    files: Vec<Hash>,
}

/// What of `from` to copy: the names `names`, each with its whole history (none: every name,
/// and every file no name points at).
///
/// # Errors
/// [`Error::NotFound`] for a name the source lacks; store errors.
pub fn plan(from: &dyn ChunkStore, names: &[String]) -> Result<Plan> {
    let records: Vec<(String, NameRecord)> = if names.is_empty() {
        from.names()?
    } else {
        names
            .iter()
            .map(|n| match from.get_name(n)? {
                Some(rec) => Ok((n.clone(), rec)),
                None => Err(Error::NotFound(n.clone())),
            })
            .collect::<Result<_>>()?
    };
    // Every version's file, oldest first, each once; with no names given, unnamed files too.
    let mut seen = HashSet::new();
    let mut files: Vec<Hash> = Vec::new();
    for (_, rec) in &records {
        for v in &rec.versions {
            if seen.insert(v.file_id) {
                files.push(v.file_id);
            }
        }
    }
    if names.is_empty() {
        for id in from.file_ids_with_prefix(&[])? {
            if seen.insert(id) {
                files.push(id);
            }
        }
    }
    Ok(Plan { records, files })
}

/// Copies what `plan` lists from `from` to `to`. `progress` is called with decoded bytes gone
/// through, file by file.
///
/// # Errors
/// [`Error::InvalidParams`] when the stores cut files differently, [`Error::Corrupt`] or
/// [`Error::ChunkNotFound`] for a chunk of the source that does not verify (nothing of that
/// file is recorded), or either store's errors.
pub fn copy(
    from: &dyn ChunkStore,
    to: &dyn ChunkStore,
    plan: &Plan,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CopyReport> {
    let (a, b) = (from.config().chunker, to.config().chunker);
    if a != b {
        return Err(Error::InvalidParams(format!(
            "the source cuts files with {a} and the target with {b}: a copy keeps files as \
             they are cut, so the target must be made with the source's params"
        )));
    }
    let Plan { records, files } = plan;
    let mut report = CopyReport::default();
    let mut copied = HashSet::new();
    for id in files {
        let Some(m) = from.get_manifest(id)? else {
            continue;
        };
        if to.get_manifest(id)?.is_some() {
            report.files_present += 1;
            progress(m.file_len);
        } else {
            copy_file(from, to, &m, &mut report, progress)?;
            report.files += 1;
        }
        copied.insert(*id);
    }

    for (name, rec) in records {
        let _one_at_a_time = to.guard().naming();
        let have = to.get_name(name)?.unwrap_or_default();
        let mut appended = false;
        for v in &rec.versions {
            if !copied.contains(&v.file_id) {
                report.skipped_versions += 1;
            } else if !have.versions.contains(v) {
                to.push_name(name, v.clone())?;
                report.versions += 1;
                appended = true;
            }
        }
        report.names += u64::from(appended);
    }
    Ok(report)
}

/// Copies one file's chunks the target lacks, its pages and then its manifest.
fn copy_file(
    from: &dyn ChunkStore,
    to: &dyn ChunkStore,
    m: &Manifest,
    report: &mut CopyReport,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    // Keeps gc off the chunks found present, and the pages, until the manifest is stored.
    let pin = to.guard().pin();
    // Keeps gc off the bases of the deltas written until they are recorded.
    let bases = to.guard().pin();
    let mut writer = to.writer()?;
    let mut pending: Option<Box<dyn PendingCommit>> = None;
    // Appended but perhaps not yet visible to `missing`: not sent again.
    let mut current: HashSet<Hash> = HashSet::new();
    let mut committing: HashSet<Hash> = HashSet::new();
    let mut since_commit = 0u64;
    walk_pages(from, m, 0, |_, bytes, page| {
        let ids: Vec<Hash> = page.chunks.iter().map(|c| c.id).collect();
        let missing = to.missing_pinned(&ids, &pin)?;
        let mut want: Vec<ChunkRef> = Vec::new();
        for (c, missing) in page.chunks.iter().zip(missing) {
            if !missing {
                report.chunks_present += 1;
            } else if !committing.contains(&c.id) && current.insert(c.id) {
                want.push(*c);
            }
        }
        for batch in batches(&want) {
            let ids: Vec<Hash> = batch.iter().map(|c| c.id).collect();
            let stored = from.read_chunks(&ids)?;
            stored
                .par_iter()
                .zip(batch)
                .try_for_each(|(c, r)| verify_payload(r, c.codec, c.raw_len, &c.payload))?;
            // A delta comes out of its store as the chunk's bytes (its base is that store's):
            // from a store that keeps deltas, a raw chunk is compressed again at the target's
            // level, as an import would. Into a store that keeps deltas, every chunk goes
            // through its delta stage, which does that compression where it needs it.
            let (level, recompress) = (to.config().level, from.config().delta);
            let again = |c: &StoredChunk| recompress && c.codec == Codec::Raw;
            let decisions: Vec<delta::Decision> = if to.config().delta {
                let raws: Vec<Cow<'_, [u8]>> = stored
                    .par_iter()
                    .map(|c| match c.codec {
                        Codec::Raw => Ok(Cow::Borrowed(&c.payload[..])),
                        codec => codec::decode(&c.id, codec, &c.payload, c.raw_len as usize)
                            .map(Cow::Owned),
                    })
                    .collect::<Result<_>>()?;
                let candidates: Vec<delta::Candidate<'_>> = stored
                    .iter()
                    .zip(&raws)
                    .map(|(c, raw)| delta::Candidate {
                        id: c.id,
                        data: raw,
                        plain_len: (!again(c)).then_some(c.payload.len()),
                    })
                    .collect();
                delta::decide(to, &bases, level, &candidates)?
            } else {
                stored
                    .par_iter()
                    .map(|c| delta::Decision {
                        features: None,
                        encoding: if again(c) {
                            delta::Encoding::Plain(codec::compress(&c.payload, level))
                        } else {
                            delta::Encoding::Given
                        },
                    })
                    .collect()
            };
            for (c, d) in stored.iter().zip(decisions) {
                let (codec, payload) = match d.encoding {
                    delta::Encoding::Delta(p) => (Codec::Delta, Cow::Owned(p)),
                    delta::Encoding::Plain(Some(z)) => (Codec::Zstd, Cow::Owned(z)),
                    delta::Encoding::Plain(None) | delta::Encoding::Given => {
                        (c.codec, Cow::Borrowed(&c.payload[..]))
                    }
                };
                let features = d.features;
                writer.append(&c.id, codec, c.raw_len, &payload)?;
                if let Some(f) = &features {
                    writer.note_features(&c.id, f);
                }
                report.chunks += 1;
                report.bytes += payload.len() as u64;
                report.raw_bytes += u64::from(c.raw_len);
                since_commit += payload.len() as u64;
            }
            if since_commit >= COMMIT_BYTES {
                // One commit in flight while appends go on; the one before is finished first.
                if let Some(p) = pending.take() {
                    p.finish()?;
                }
                committing = std::mem::take(&mut current);
                pending = Some(writer.start_commit()?);
                since_commit = 0;
            }
        }
        let hash = Hash::of(&bytes);
        pin.add_page(hash)?;
        to.put_page(&hash, &bytes)?;
        progress(page.chunks.iter().map(|c| u64::from(c.len)).sum());
        Ok(true)
    })?;
    if let Some(p) = pending.take() {
        p.finish()?;
    }
    writer.commit()?;
    drop(writer);
    to.put_manifest(m)
}

/// `refs` in runs of at most [`BATCH_BYTES`] decoded bytes (at least one ref each).
fn batches(refs: &[ChunkRef]) -> impl Iterator<Item = &[ChunkRef]> {
    let mut rest = refs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0u64;
        let n = rest
            .iter()
            .take_while(|c| {
                let fits = bytes == 0 || bytes + u64::from(c.len) <= BATCH_BYTES;
                bytes += u64::from(c.len);
                fits
            })
            .count()
            .max(1);
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}
