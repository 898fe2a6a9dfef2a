//! Import: bytes → chunks → ids → which are missing? → zstd → pack → index → manifest.
//!
//! Threads: one reader cuts blocks of chunks (FastCDC) and hashes the whole file as they pass;
//! the caller's thread fans each block out over the rayon pool to hash its chunks, asks the
//! store about all of a block's ids in one call, fans out again to compress only the missing
//! chunks, then appends them in order. Between the reader and the rest sits a queue of
//! [`QUEUE_BLOCKS`] blocks, so memory is bounded by a few blocks whatever the file size, and
//! chunking of the next block overlaps hashing and compression of this one.

use std::collections::HashSet;
use std::io::Read;
use std::sync::mpsc;

use rayon::prelude::*;
use serde::Serialize;

use crate::chunker::{Block, Chunker, DEFAULT_BLOCK_SIZE};
use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Manifest, ManifestBuilder};
use crate::store::{ChunkStore, ChunkWriter};

/// Blocks queued between the reader and the hashing/compressing stage.
const QUEUE_BLOCKS: usize = 2;
/// Encoded bytes appended before the writer commits (fsync, then index) = 64 MiB.
const COMMIT_BYTES: u64 = 64 * 1024 * 1024;

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// BLAKE3 of the whole input.
    pub id: Hash,
    /// Bytes read.
    pub size: u64,
    /// Chunks in the manifest.
    pub chunks: u64,
    /// Chunks the store did not have before.
    pub new_chunks: u64,
    /// Uncompressed bytes of those chunks.
    pub new_bytes: u64,
    /// Encoded bytes written for them.
    pub stored_bytes: u64,
}

/// Cuts, hashes and stores everything `reader` yields, then records the manifest.
///
/// `progress` is called with the number of bytes read after each block, from the reader thread.
///
/// # Errors
/// The reader's I/O errors (as [`Error::Stream`]), store errors. Chunks committed before an
/// error stay in the store unreferenced (gc reclaims them); no manifest is recorded.
pub fn ingest<R: Read + Send>(
    store: &dyn ChunkStore,
    reader: R,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Manifest, IngestReport)> {
    let config = store.config();
    std::thread::scope(|s| {
        let (blocks_tx, blocks_rx) = mpsc::sync_channel::<std::io::Result<Block>>(QUEUE_BLOCKS);
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let reader_thread = s.spawn(move || {
            let mut chunker = Chunker::new(reader, config.chunker, DEFAULT_BLOCK_SIZE);
            let mut hasher = blake3::Hasher::new();
            loop {
                if let Ok(buf) = recycle_rx.try_recv() {
                    chunker.recycle(buf);
                }
                let msg = chunker.next_block();
                let done = !matches!(msg, Ok(Some(_)));
                if let Ok(Some(b)) = &msg {
                    hasher.update(&b.data);
                    progress(b.data.len() as u64);
                }
                if let Some(msg) = msg.transpose()
                    && blocks_tx.send(msg).is_err()
                {
                    break; // the consumer stopped on an error
                }
                if done {
                    break;
                }
            }
            Hash::from(hasher.finalize())
        });

        let mut stage = StoreStage::new(store)?;
        for msg in blocks_rx {
            let block = msg.map_err(|e| Error::Stream("cannot read input", e))?;
            stage.block(&block)?;
            let _ = recycle_tx.send(block.data);
        }
        let file_id = reader_thread.join().expect("reader thread panicked");
        stage.finish(file_id)
    })
}

/// The consumer side of the pipeline: everything after chunking.
struct StoreStage<'a> {
    store: &'a dyn ChunkStore,
    writer: Box<dyn ChunkWriter + 'a>,
    level: i32,
    builder: ManifestBuilder,
    /// Ids appended since the last commit: not yet visible to `missing`, but stored all the same.
    uncommitted: HashSet<Hash>,
    report: IngestReport,
}

impl<'a> StoreStage<'a> {
    fn new(store: &'a dyn ChunkStore) -> Result<Self> {
        Ok(StoreStage {
            store,
            writer: store.writer()?,
            level: store.config().level,
            builder: ManifestBuilder::default(),
            uncommitted: HashSet::new(),
            report: IngestReport {
                id: Hash::of(b""),
                size: 0,
                chunks: 0,
                new_chunks: 0,
                new_bytes: 0,
                stored_bytes: 0,
            },
        })
    }

    fn block(&mut self, block: &Block) -> Result<()> {
        let spans: Vec<_> = block.spans().collect();
        let ids: Vec<Hash> = spans.par_iter().map(|r| Hash::of(&block.data[r.clone()])).collect();
        let missing = self.store.missing(&ids)?;
        let new: Vec<usize> = (0..ids.len())
            .filter(|&i| missing[i] && self.uncommitted.insert(ids[i]))
            .collect();
        let encoded: Vec<Option<Vec<u8>>> = new
            .par_iter()
            .map(|&i| codec::compress(&block.data[spans[i].clone()], self.level))
            .collect();
        for (&i, enc) in new.iter().zip(&encoded) {
            let raw = &block.data[spans[i].clone()];
            let (codec, payload) = match enc {
                Some(z) => (Codec::Zstd, z.as_slice()),
                None => (Codec::Raw, raw),
            };
            self.writer.append(&ids[i], codec, raw.len() as u32, payload)?;
            self.report.new_chunks += 1;
            self.report.new_bytes += raw.len() as u64;
            self.report.stored_bytes += payload.len() as u64;
        }
        for (id, span) in ids.iter().zip(&spans) {
            if let Some(page) = self.builder.push(ChunkRef { id: *id, len: span.len() as u32 }) {
                self.store.put_page(&page.pref.hash, &page.bytes)?;
            }
        }
        self.report.chunks += ids.len() as u64;
        self.report.size += block.data.len() as u64;
        if self.writer.pending_bytes() >= COMMIT_BYTES {
            self.writer.commit()?;
            self.uncommitted.clear();
        }
        Ok(())
    }

    fn finish(mut self, file_id: Hash) -> Result<(Manifest, IngestReport)> {
        self.writer.commit()?;
        let (manifest, last) = self.builder.finish(file_id, self.store.config().chunker);
        if let Some(page) = last {
            self.store.put_page(&page.pref.hash, &page.bytes)?;
        }
        self.store.put_manifest(&manifest)?;
        self.report.id = file_id;
        Ok((manifest, self.report))
    }
}
