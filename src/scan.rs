//! Cut and hash a stream without storing it: the first half of the import pipeline, for a
//! push (which asks the server what it lacks before sending anything) and for a pull's seed
//! file (whose chunks are reused).
//!
//! The reader thread cuts; the caller's thread hashes each block's chunks over the rayon pool;
//! a third thread hashes the whole stream. Memory: a few blocks plus 36 bytes per chunk.

use std::io::Read;
use std::sync::mpsc;

use rayon::prelude::*;

use crate::chunker::{Block, Chunker, DEFAULT_BLOCK_SIZE};
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::ChunkRef;

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// BLAKE3 of the whole stream.
    pub id: Hash,
    /// Its length.
    pub size: u64,
    /// Its chunks in order.
    pub chunks: Vec<ChunkRef>,
}

/// Cuts `reader` with `params` and hashes every chunk and the whole stream.
///
/// `progress` gets the bytes read after each block, from the reader thread.
///
/// # Errors
/// [`Error::Stream`] if reading fails.
pub fn scan<R: Read + Send>(
    reader: R,
    params: ChunkerParams,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Scan> {
    scan_with(reader, params, progress, |_| {})
}

/// As [`scan`], and calls `each` with every block's chunk refs as soon as they are known, on
/// the hashing thread: a push streams its manifest to the server while it reads.
///
/// # Errors
/// [`Error::Stream`] if reading fails.
pub fn scan_with<R: Read + Send>(
    reader: R,
    params: ChunkerParams,
    progress: &(dyn Fn(u64) + Sync),
    mut each: impl FnMut(&[ChunkRef]),
) -> Result<Scan> {
    std::thread::scope(|s| {
        let (blocks_tx, blocks_rx) = mpsc::sync_channel::<std::io::Result<Block>>(2);
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        s.spawn(move || {
            let mut chunker = Chunker::new(reader, params, DEFAULT_BLOCK_SIZE);
            loop {
                if let Ok(buf) = recycle_rx.try_recv() {
                    chunker.recycle(buf);
                }
                match chunker.next_block().transpose() {
                    None => break,
                    Some(msg) => {
                        let failed = msg.is_err();
                        if let Ok(b) = &msg {
                            progress(b.data.len() as u64);
                        }
                        if blocks_tx.send(msg).is_err() || failed {
                            break;
                        }
                    }
                }
            }
        });
        let (whole_tx, whole_rx) = mpsc::sync_channel::<Vec<u8>>(2);
        let hasher = s.spawn(move || {
            let mut h = blake3::Hasher::new();
            let mut size = 0u64;
            for data in whole_rx {
                h.update(&data);
                size += data.len() as u64;
                let _ = recycle_tx.send(data);
            }
            (Hash::from(h.finalize()), size)
        });
        let mut chunks = Vec::new();
        for msg in blocks_rx {
            let block = msg.map_err(Error::Input)?;
            let spans: Vec<_> = block.spans().collect();
            let refs: Vec<ChunkRef> = spans
                .par_iter()
                .map(|r| ChunkRef {
                    id: Hash::of(&block.data[r.clone()]),
                    len: r.len() as u32,
                })
                .collect();
            each(&refs);
            chunks.extend(refs);
            if whole_tx.send(block.data).is_err() {
                break;
            }
        }
        drop(whole_tx);
        let (id, size) = hasher.join().expect("hasher thread panicked");
        Ok(Scan { id, size, chunks })
    })
}
