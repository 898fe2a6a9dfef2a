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

use crate::codec;
use crate::config::ChunkerParams;
use crate::error::Result;
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest, ManifestBuilder};
use crate::store::{ChunkStore, Pin};

/// A chunk the store lacks, ready to be appended.
pub struct NewChunk {
    /// The chunk's id.
    pub id: Hash,
    /// Where it is in the step's data.
    pub span: Range<usize>,
    /// Its zstd form, if that is smaller than the chunk.
    pub compressed: Option<Vec<u8>>,
}

impl NewChunk {
    /// Bytes it takes in a pack.
    pub fn stored_len(&self) -> usize {
        self.compressed.as_ref().map_or(self.span.len(), Vec::len)
    }
}

/// Hashes the chunks `spans` of `data`, asks the store in one call which it lacks (pinning every
/// id with `pin`, so what is present stays), and compresses the lacking chunks that `take`
/// accepts. `take` is called in order, once for each lacking chunk: a caller skips ids it
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
    let level = store.config().level;
    let new = wanted
        .par_iter()
        .map(|&i| NewChunk {
            id: ids[i],
            span: spans[i].clone(),
            compressed: codec::compress(&data[spans[i].clone()], level),
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
