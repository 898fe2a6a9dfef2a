//! Export: manifest → for each id: index → pack read → unzstd → BLAKE3 == id? → out.
//!
//! The caller's thread walks the manifest one page at a time and reads, decodes and verifies a
//! batch of chunks in parallel over the rayon pool; a writer thread puts them out in order and
//! hashes the whole file as it goes. At the end the file hash must equal the file id. A chunk
//! that fails verification stops the export with [`Error::Corrupt`] naming it: wrong bytes are
//! never passed on silently.

use std::io::Write;
use std::sync::mpsc;

use rayon::prelude::*;

use crate::codec;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest, Page};
use crate::store::ChunkStore;

/// Uncompressed bytes decoded per parallel batch = 8 MiB.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Batches queued for the writer.
const QUEUE_BATCHES: usize = 2;

/// Reads chunk `r.id`, decodes it and checks its length and hash.
///
/// # Errors
/// [`Error::ChunkNotFound`], [`Error::Corrupt`], or the store's errors.
pub fn read_verified(store: &dyn ChunkStore, r: &ChunkRef) -> Result<Vec<u8>> {
    let stored = store.read_chunk(&r.id)?;
    if stored.raw_len != r.len {
        return Err(Error::Corrupt {
            id: r.id,
            detail: format!("stored length {} differs from the manifest's {}", stored.raw_len, r.len),
        });
    }
    let data = codec::decode(&r.id, stored.codec, &stored.payload, r.len as usize)?;
    let actual = Hash::of(&data);
    if actual != r.id {
        return Err(Error::Corrupt { id: r.id, detail: format!("content hashes to {actual}") });
    }
    Ok(data)
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
    for pref in &manifest.pages {
        let bytes = store.get_page(&pref.hash)?;
        if Hash::of(&bytes) != pref.hash {
            return Err(Error::BadManifest(manifest.file_id));
        }
        let page = Page::decode(&bytes)?;
        manifest.check_page(pref, &page)?;
        f(page)?;
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
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(QUEUE_BATCHES);
        let writer = s.spawn(move || -> Result<Hash> {
            let mut out = out;
            let mut hasher = blake3::Hasher::new();
            for batch in rx {
                let mut n = 0;
                for chunk in &batch {
                    hasher.update(chunk);
                    out.write_all(chunk).map_err(|e| Error::Stream("cannot write output", e))?;
                    n += chunk.len() as u64;
                }
                progress(n);
            }
            out.flush().map_err(|e| Error::Stream("cannot write output", e))?;
            Ok(Hash::from(hasher.finalize()))
        });

        let fed = for_each_page(store, manifest, |page| {
            let mut start = 0;
            while start < page.chunks.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < page.chunks.len() && (end == start || bytes < BATCH_BYTES) {
                    bytes += u64::from(page.chunks[end].len);
                    end += 1;
                }
                let batch: Vec<Vec<u8>> = page.chunks[start..end]
                    .par_iter()
                    .map(|r| read_verified(store, r))
                    .collect::<Result<_>>()?;
                if tx.send(batch).is_err() {
                    return Ok(()); // the writer failed; its error is reported below
                }
                start = end;
            }
            Ok(())
        });
        drop(tx);
        let written = writer.join().expect("writer thread panicked");
        fed?;
        let actual = written?;
        if actual != manifest.file_id {
            return Err(Error::FileMismatch { expected: manifest.file_id, actual });
        }
        Ok(())
    })
}
