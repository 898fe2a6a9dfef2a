//! The recipe of one file: its id, length, chunker params and the ordered list of chunk refs.
//!
//! Manifests are paged so that import and export hold one page at a time whatever the file
//! size. A page holds up to [`PAGE_CHUNKS`] refs and is stored under the hash of its encoding
//! (so identical pages of different files are stored once); the [`Manifest`] header lists the
//! pages in order. Format (version byte 1, bincode 2 standard):
//!
//! ```text
//! Manifest { file_id, file_len, chunker: {min, avg, max}, chunk_count, pages: [PageRef { hash, chunks, bytes }] }
//! Page     { chunks: [ChunkRef { id, len }] }
//! ```

use serde::{Deserialize, Serialize};

use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::record;

/// Format version of manifests and pages.
pub const MANIFEST_VERSION: u8 = 1;

/// Chunk refs per page = 1024 (about 37 KiB encoded, 64 MiB of file at the default sizes).
pub const PAGE_CHUNKS: usize = 1024;

/// One chunk of a file: its id and uncompressed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub id: Hash,
    /// Length of the chunk in bytes.
    pub len: u32,
}

/// A run of consecutive chunk refs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The refs, in file order.
    pub chunks: Vec<ChunkRef>,
}

impl Page {
    /// Encodes the page; its id is the hash of these bytes.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(MANIFEST_VERSION, self)
    }

    /// Decodes a page.
    ///
    /// # Errors
    /// On an unknown version or damaged bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        record::decode("manifest page", MANIFEST_VERSION, bytes)
    }
}

/// Where a page sits in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// Hash of the encoded page.
    pub hash: Hash,
    /// Number of refs in it.
    pub chunks: u32,
    /// Sum of their lengths.
    pub bytes: u64,
}

/// The header of a file's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// BLAKE3 of the whole file.
    pub file_id: Hash,
    /// Length of the file in bytes.
    pub file_len: u64,
    /// Params the file was cut with.
    pub chunker: ChunkerParams,
    /// Total number of chunk refs.
    pub chunk_count: u64,
    /// The pages, in order.
    pub pages: Vec<PageRef>,
}

impl Manifest {
    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(MANIFEST_VERSION, self)
    }

    /// Decodes a header and checks that its page totals add up.
    ///
    /// # Errors
    /// On an unknown version, damaged bytes or inconsistent totals.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let m: Manifest = record::decode("manifest", MANIFEST_VERSION, bytes)?;
        let bad = || Error::BadManifest(m.file_id);
        let mut chunks = 0u64;
        let mut len = 0u64;
        for p in &m.pages {
            chunks = chunks.checked_add(u64::from(p.chunks)).ok_or_else(bad)?;
            len = len.checked_add(p.bytes).ok_or_else(bad)?;
            if p.chunks as usize > PAGE_CHUNKS
                || p.bytes > u64::from(p.chunks) * u64::from(m.chunker.max)
            {
                return Err(bad());
            }
        }
        if chunks != m.chunk_count || len != m.file_len {
            return Err(bad());
        }
        Ok(m)
    }

    /// Checks that `page` is the one `pref` describes.
    ///
    /// # Errors
    /// [`Error::BadManifest`] if counts or lengths differ.
    pub fn check_page(&self, pref: &PageRef, page: &Page) -> Result<()> {
        // Lengths are checked before anything is allocated from them: no chunk is empty or
        // longer than the params allow, so a batch of refs is bounded by what it adds up to.
        let max = self.chunker.max;
        if page.chunks.iter().any(|c| c.len == 0 || c.len > max) {
            return Err(Error::BadManifest(self.file_id));
        }
        let bytes: u64 = page.chunks.iter().map(|c| u64::from(c.len)).sum();
        if page.chunks.len() != pref.chunks as usize || bytes != pref.bytes {
            return Err(Error::BadManifest(self.file_id));
        }
        Ok(())
    }
}

/// Collects chunk refs into pages as a file streams past.
#[derive(Default)]
pub struct ManifestBuilder {
    current: Page,
    pages: Vec<PageRef>,
    chunk_count: u64,
    bytes: u64,
}

/// A finished page: its ref and its encoding, ready to store.
pub struct SealedPage {
    /// Where it goes in the manifest.
    pub pref: PageRef,
    /// The encoded page.
    pub bytes: Vec<u8>,
}

impl ManifestBuilder {
    /// Appends a ref; returns a page when one fills up.
    pub fn push(&mut self, r: ChunkRef) -> Option<SealedPage> {
        self.current.chunks.push(r);
        self.chunk_count += 1;
        self.bytes += u64::from(r.len);
        (self.current.chunks.len() == PAGE_CHUNKS).then(|| self.seal())
    }

    /// Goes on from `pages` already sealed and stored, and the refs of the unfinished page
    /// (a tus upload resumed after a restart). Pages fill exactly as if nothing had stopped.
    pub fn resume(pages: Vec<PageRef>, current: Vec<ChunkRef>) -> Self {
        let page_chunks: u64 = pages.iter().map(|p| u64::from(p.chunks)).sum();
        let page_bytes: u64 = pages.iter().map(|p| p.bytes).sum();
        ManifestBuilder {
            chunk_count: page_chunks + current.len() as u64,
            bytes: page_bytes + current.iter().map(|c| u64::from(c.len)).sum::<u64>(),
            current: Page { chunks: current },
            pages,
        }
    }

    /// The pages sealed so far and the refs of the unfinished page.
    pub fn parts(&self) -> (&[PageRef], &[ChunkRef]) {
        (&self.pages, &self.current.chunks)
    }

    /// Bytes of all refs pushed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn seal(&mut self) -> SealedPage {
        let page = std::mem::take(&mut self.current);
        let bytes = page.encode();
        let pref = PageRef {
            hash: Hash::of(&bytes),
            chunks: page.chunks.len() as u32,
            bytes: page.chunks.iter().map(|c| u64::from(c.len)).sum(),
        };
        self.pages.push(pref);
        SealedPage { pref, bytes }
    }

    /// Seals the last partial page (if any) and builds the header.
    pub fn finish(
        mut self,
        file_id: Hash,
        chunker: ChunkerParams,
    ) -> (Manifest, Option<SealedPage>) {
        let last = (!self.current.chunks.is_empty()).then(|| self.seal());
        let m = Manifest {
            file_id,
            file_len: self.bytes,
            chunker,
            chunk_count: self.chunk_count,
            pages: self.pages,
        };
        (m, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fill_and_round_trip() {
        let mut b = ManifestBuilder::default();
        let mut sealed = Vec::new();
        for i in 0..(PAGE_CHUNKS * 2 + 5) {
            let r = ChunkRef {
                id: Hash::of(&i.to_le_bytes()),
                len: 100,
            };
            sealed.extend(b.push(r));
        }
        assert_eq!(sealed.len(), 2);
        let (m, last) = b.finish(Hash::of(b"f"), ChunkerParams::DEFAULT);
        let last = last.expect("partial page");
        assert_eq!(last.pref.chunks, 5);
        assert_eq!(m.pages.len(), 3);
        assert_eq!(m.file_len, (PAGE_CHUNKS as u64 * 2 + 5) * 100);
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        let page = Page::decode(&sealed[1].bytes).unwrap();
        back.check_page(&m.pages[1], &page).unwrap();
        assert_eq!(Hash::of(&page.encode()), m.pages[1].hash);
    }

    #[test]
    fn inconsistent_header_is_refused() {
        let (mut m, _) = ManifestBuilder::default().finish(Hash::of(b""), ChunkerParams::DEFAULT);
        m.file_len = 9;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(Error::BadManifest(_))
        ));
    }
}
