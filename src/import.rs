//! The import step, the same wherever bytes come in (local import and `PUT /v1/files` through
//! `ingest`, tus `PATCH`es through `upload/tus`): a run of cut chunks → ids, hashed on all
//! cores → which the store lacks, in one pinned lookup → the new ones compressed, on all cores;
//! and on the manifest side, refs into the builder with every sealed page stored and pinned,
//! then the last page at the end. Where the new chunks go is the caller's own: the import's
//! writer thread, or the server's chunk sink. The chunk endpoints do not cut or hash a stream:
//! they check each chunk a client sent against its id and compress it (`upload/sink.rs`,
//! `verify`), then store it through the same sink.

use std::ops::Range;

use rayon::prelude::*;

use crate::codec::{self, Codec};
use crate::config::ChunkerParams;
use crate::delta;
use crate::error::Result;
use crate::features::SuperFeatures;
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest, ManifestBuilder};
use crate::store::{ChunkStore, Pin};

/// A chunk the store lacks, ready to be appended.
pub struct NewChunk {
    /// The chunk's id.
    pub id: Hash,
    /// Where it is in the step's data.
    pub span: Range<usize>,
    /// How it is stored: raw (the span's bytes), zstd or a delta (`delta.rs`).
    pub codec: Codec,
    /// Its payload when it is not stored raw.
    pub encoded: Option<Vec<u8>>,
    /// Its super-features, to record with it (a store that keeps deltas; never for a delta).
    pub features: Option<SuperFeatures>,
}

impl NewChunk {
    /// Bytes it takes in a pack.
    pub fn stored_len(&self) -> usize {
        self.encoded.as_ref().map_or(self.span.len(), Vec::len)
    }

    /// Its payload: the encoded bytes, or the chunk itself from `data` when stored raw.
    pub fn payload<'a>(&'a self, data: &'a [u8]) -> &'a [u8] {
        self.encoded.as_deref().unwrap_or(&data[self.span.clone()])
    }
}

/// Hashes the chunks `spans` of `data`, asks the store in one call which it lacks (pinning every
/// id with `pin`, so what is present stays), and compresses the lacking chunks that `take`
/// accepts — in a store that keeps deltas, as deltas against similar stored chunks where
/// that pays (`delta.rs`; the bases are pinned with `bases`, to hold until the chunks are
/// committed). `take` is called in order, once for each lacking chunk: a caller skips ids it
/// already holds (appended, not yet visible to the store). Returns every chunk's id, in order,
/// and the new chunks, in order.
///
/// # Errors
/// Store errors.
pub fn new_chunks(
    store: &dyn ChunkStore,
    data: &[u8],
    spans: &[Range<usize>],
    pin: &Pin,
    bases: &Pin,
    mut take: impl FnMut(&Hash) -> bool,
) -> Result<(Vec<Hash>, Vec<NewChunk>)> {
    let ids: Vec<Hash> = spans
        .par_iter()
        .map(|r| Hash::of(&data[r.clone()]))
        .collect();
    let missing = store.missing_pinned(&ids, pin)?;
    let wanted: Vec<usize> = (0..ids.len())
        .filter(|&i| missing[i] && take(&ids[i]))
        .collect();
    let config = store.config();
    if !config.delta || wanted.is_empty() {
        let new = wanted
            .par_iter()
            .map(|&i| {
                let z = codec::compress(&data[spans[i].clone()], config.level);
                NewChunk {
                    id: ids[i],
                    span: spans[i].clone(),
                    codec: if z.is_some() { Codec::Zstd } else { Codec::Raw },
                    encoded: z,
                    features: None,
                }
            })
            .collect();
        return Ok((ids, new));
    }
    let candidates: Vec<delta::Candidate<'_>> = wanted
        .iter()
        .map(|&i| delta::Candidate {
            id: ids[i],
            data: &data[spans[i].clone()],
            plain_len: None,
        })
        .collect();
    let decisions = delta::decide(store, bases, config.level, &candidates)?;
    let new = wanted
        .iter()
        .zip(decisions)
        .map(|(&i, d)| {
            let (codec, encoded) = match d.encoding {
                delta::Encoding::Delta(p) => (Codec::Delta, Some(p)),
                delta::Encoding::Plain(Some(z)) => (Codec::Zstd, Some(z)),
                delta::Encoding::Plain(None) | delta::Encoding::Given => (Codec::Raw, None),
            };
            NewChunk {
                id: ids[i],
                span: spans[i].clone(),
                codec,
                encoded,
                features: d.features,
            }
        })
        .collect();
    Ok((ids, new))
}

/// Adds the chunks `ids` (with the lengths of `spans`) to `builder`; every page it seals is
/// stored and pinned by `pin` as one step under gc's read lock. Returns how many refs the pages
/// stored now list.
///
/// # Errors
/// Store errors.
pub fn add_refs(
    store: &dyn ChunkStore,
    builder: &mut ManifestBuilder,
    ids: &[Hash],
    spans: &[Range<usize>],
    pin: &Pin,
) -> Result<usize> {
    let mut paged = 0;
    for (id, span) in ids.iter().zip(spans) {
        let r = ChunkRef {
            id: *id,
            len: span.len() as u32,
        };
        if let Some(page) = builder.push(r) {
            store.put_page_pinned(&page, pin)?;
            paged += page.pref.chunks as usize;
        }
    }
    Ok(paged)
}

/// Ends the manifest of `builder` as the file `file_id`: its last page stored and pinned by
/// `pin`. Recording the manifest is the caller's next step, once every chunk is committed.
/// Returns the manifest and how many refs the last page lists.
///
/// # Errors
/// Store errors.
pub fn seal(
    store: &dyn ChunkStore,
    builder: ManifestBuilder,
    file_id: Hash,
    chunker: ChunkerParams,
    pin: &Pin,
) -> Result<(Manifest, usize)> {
    let (manifest, last) = builder.finish(file_id, chunker);
    let mut paged = 0;
    if let Some(page) = last {
        store.put_page_pinned(&page, pin)?;
        paged = page.pref.chunks as usize;
    }
    Ok((manifest, paged))
}
