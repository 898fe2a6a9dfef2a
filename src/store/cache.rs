//! A bounded cache of recently read pack entries, for a store whose packs are behind a
//! network (every read a request): chunks a file repeats, or a file read again (a pull after
//! a push, the `Range` requests of one download), come from memory. Keyed by the entry's place
//! as well as the chunk's id, so an entry that compaction moved, or a repair replaced, is read
//! afresh; payloads are kept as stored, and readers still verify each one.

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::codec::Codec;
use crate::hash::Hash;
use crate::store::pack::ChunkLoc;

/// Payload bytes a store keeps cached at most = 32 MiB. Only single-chunk reads fill it
/// (batched reads consult it): filled from every batch, it held a server pushing 512 MiB to
/// a bucket store at 150 MiB of peak RSS, against 116 without it.
pub const CACHE_BYTES: u64 = 32 << 20;

type Key = (Hash, u64, u64);
type Entry = (Codec, Bytes);

/// Weighs an entry by its payload (plus its key and bookkeeping).
#[derive(Clone)]
struct ByLength;

impl Weighter<Key, Entry> for ByLength {
    fn weight(&self, _: &Key, entry: &Entry) -> u64 {
        entry.1.len() as u64 + 64
    }
}

/// Recently read entries, within a byte budget.
pub struct EntryCache(Cache<Key, Entry, ByLength>);

impl EntryCache {
    /// An empty cache of at most `bytes` of payloads.
    pub fn new(bytes: u64) -> Self {
        // Sized for entries of the default average chunk (64 KiB) compressed a little.
        let items = (bytes / (48 << 10)).max(16) as usize;
        EntryCache(Cache::with_weighter(items, bytes, ByLength))
    }

    /// The entry of chunk `id` at `loc`, if cached.
    pub fn get(&self, id: &Hash, loc: &ChunkLoc) -> Option<(Codec, Bytes)> {
        self.0.get(&(*id, loc.pack, loc.offset))
    }

    /// Keeps the entry of chunk `id` at `loc`.
    pub fn put(&self, id: &Hash, loc: &ChunkLoc, codec: Codec, payload: &[u8]) {
        self.0.insert(
            (*id, loc.pack, loc.offset),
            (codec, Bytes::copy_from_slice(payload)),
        );
    }
}
