//! The pack format, the same in every pack storage (a file, an object): entries back to back.
//!
//! Format (version 1), all integers little-endian:
//!
//! ```text
//! pack   = "HOARDPK" 0x01, then entries back to back
//! entry  = "hCk1" | codec u8 | 3 zero bytes | raw_len u32 | stored_len u32 | chunk id [32] | payload
//! ```
//!
//! Every entry names its chunk, codec and lengths (and a delta's payload starts with its
//! base's id, see `codec.rs`), so the chunk table can be rebuilt from the packs alone. Durability: a pack's bytes are synced (see [`PackSink`](crate::store::packs::PackSink))
//! before the catalog records locations that point at them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::hash::Hash;

/// First bytes of every pack file; the last byte is the format version.
pub const PACK_MAGIC: [u8; 8] = *b"HOARDPK\x01";
/// First bytes of every entry.
pub const ENTRY_MAGIC: [u8; 4] = *b"hCk1";
/// Bytes of an entry header = 48.
pub const ENTRY_HEADER_LEN: usize = 48;
/// A writer starts a new pack once its current one passes this size = 256 MiB.
pub const PACK_TARGET_LEN: u64 = 256 * 1024 * 1024;
/// Largest entry believed = 16 MiB, FastCDC 2020's largest chunk (a damaged length is not
/// allocated).
pub const MAX_ENTRY: u32 = 16 << 20;

/// Where a chunk's entry is: the index value of the `chunks` tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// Pack number (file `packs/{pack:016x}.pack`).
    pub pack: u64,
    /// Offset of the entry header in the pack.
    pub offset: u64,
    /// Encoded payload length.
    pub stored_len: u32,
    /// Decoded chunk length.
    pub raw_len: u32,
    /// Codec tag of the payload.
    pub codec: u8,
    /// For a delta ([`Codec::Delta`]): the chunk it is stored against, which gc keeps while
    /// this chunk is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Hash>,
}

/// Encodes an entry header.
pub fn entry_header(
    id: &Hash,
    codec: Codec,
    raw_len: u32,
    stored_len: u32,
) -> [u8; ENTRY_HEADER_LEN] {
    let mut h = [0u8; ENTRY_HEADER_LEN];
    h[0..4].copy_from_slice(&ENTRY_MAGIC);
    h[4] = codec as u8;
    h[8..12].copy_from_slice(&raw_len.to_le_bytes());
    h[12..16].copy_from_slice(&stored_len.to_le_bytes());
    h[16..48].copy_from_slice(id.as_bytes());
    h
}

/// Decodes an entry header: `(id, codec tag, raw_len, stored_len)`, or `None` if the magic
/// is wrong or the reserved bytes are not zero (so any damage to a header shows).
pub fn parse_entry_header(h: &[u8; ENTRY_HEADER_LEN]) -> Option<(Hash, u8, u32, u32)> {
    if h[0..4] != ENTRY_MAGIC || h[5..8] != [0, 0, 0] {
        return None;
    }
    let raw_len = u32::from_le_bytes(h[8..12].try_into().ok()?);
    let stored_len = u32::from_le_bytes(h[12..16].try_into().ok()?);
    Some((Hash::from_slice(&h[16..48])?, h[4], raw_len, stored_len))
}

/// The path of pack `n` under `dir`.
pub fn pack_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.pack"))
}

/// The header of a new entry for `payload` and where it will be: at `offset` of pack `pack`.
///
/// # Errors
/// A payload over 4 GiB (its length does not fit the header).
pub fn new_entry(
    pack: u64,
    offset: u64,
    id: &Hash,
    codec: Codec,
    raw_len: u32,
    payload: &[u8],
) -> std::io::Result<([u8; ENTRY_HEADER_LEN], ChunkLoc)> {
    let stored_len =
        u32::try_from(payload.len()).map_err(|_| std::io::Error::other("entry over 4 GiB"))?;
    let base = match codec {
        Codec::Delta => Some(
            crate::codec::split_delta(id, payload)
                .map_err(std::io::Error::other)?
                .0,
        ),
        _ => None,
    };
    let loc = ChunkLoc {
        pack,
        offset,
        stored_len,
        raw_len,
        codec: codec as u8,
        base,
    };
    Ok((entry_header(id, codec, raw_len, stored_len), loc))
}
