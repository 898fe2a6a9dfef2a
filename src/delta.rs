//! Stage 4b of import, between compress and pack: a new chunk stored as a delta against a
//! similar stored chunk when that is much smaller than the chunk compressed on its own.
//!
//! For each new chunk: its super-features (`features.rs`); one store call for all of a
//! batch's chunks finds, per chunk, a stored plain chunk sharing a super-feature (its base);
//! the bases are pinned and looked up in one more call (so gc keeps them until the deltas
//! naming them are recorded, after which gc keeps a base while any delta names it), read in
//! one batch and checked against their ids; then, on all cores, each chunk is compressed
//! with its base as zstd's reference prefix ([`codec::compress_against`]) and kept as a
//! delta when the frame is at most [`KEEP_NUM`]/[`KEEP_DEN`] of the chunk's plain encoding
//! (which is computed only when the delta is not clearly smaller, see [`CLEAR_WIN`]).
//! One level only: a base is never a delta, so a read costs at most one extra chunk.
//! Features are recorded for the chunks stored plain, so later chunks can find them.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::codec;
use crate::error::Result;
use crate::features::{self, SuperFeatures};
use crate::hash::Hash;
use crate::store::{ChunkStore, Pin, StoredChunk};

/// A delta is kept only when its payload is at most `KEEP_NUM / KEEP_DEN` of the chunk's
/// plain encoding: a delta costs a read of its base, so a small gain is not worth it.
pub const KEEP_NUM: usize = 3;
/// See [`KEEP_NUM`].
pub const KEEP_DEN: usize = 4;
/// A delta at most `1 / CLEAR_WIN` of the chunk's length is kept without compressing the
/// chunk on its own to compare (zstd alone rarely shrinks a chunk 16 times, and a delta
/// that small is what the stage is for): that skips the plain compression, the stage's
/// dearest step, for most chunks it stores as deltas.
pub const CLEAR_WIN: usize = 16;

/// A new chunk for the delta stage.
pub struct Candidate<'a> {
    /// Its id.
    pub id: Hash,
    /// Its bytes.
    pub data: &'a [u8],
    /// Bytes its plain encoding takes, if the caller has it already (chunks pushed to a
    /// server arrive encoded); else the stage compresses the chunk when it needs to.
    pub plain_len: Option<usize>,
}

/// How one chunk is to be stored.
#[derive(Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As a delta: the payload (base id, then the frame).
    Delta(Vec<u8>),
    /// On its own: its zstd form, or raw (`None`) when zstd does not shrink it.
    Plain(Option<Vec<u8>>),
    /// On its own, as the caller has it (a candidate that came with its `plain_len`).
    Given,
}

/// What the stage decided for one chunk.
pub struct Decision {
    /// Its super-features, to record with it: `None` for a delta (a base is never a delta),
    /// or when none were sampled.
    pub features: Option<SuperFeatures>,
    /// How it is stored.
    pub encoding: Encoding,
}

/// Decides, for each of `chunks` in order, how it is stored (see the module notes), at zstd
/// `level`. The bases chosen are pinned with `pin`: hold it until the chunks are committed.
///
/// # Errors
/// Store errors. A base that cannot be read or is damaged is not used (no error).
pub fn decide(
    store: &dyn ChunkStore,
    pin: &Pin,
    level: i32,
    chunks: &[Candidate<'_>],
) -> Result<Vec<Decision>> {
    let features: Vec<Option<SuperFeatures>> = chunks
        .par_iter()
        .map(|c| features::super_features(c.data))
        .collect();
    let (base_of, read) = find_bases(store, pin, chunks, &features)?;
    Ok(chunks
        .par_iter()
        .zip(features)
        .zip(base_of)
        // One compression context per worker, reused for its chunks.
        .map_init(codec::DeltaEncoder::new, |enc, ((c, features), base)| {
            let base = base.and_then(|b| read.get(&b).map(|raw| (b, raw.as_slice())));
            let encoding = encode(enc, c, base, level);
            Decision {
                features: features.filter(|_| !matches!(encoding, Encoding::Delta(_))),
                encoding,
            }
        })
        .collect())
}

/// A chunk's encoding given its base (id and bytes), if it has one.
fn encode<'b>(
    enc: &mut codec::DeltaEncoder<'b>,
    c: &Candidate<'_>,
    base: Option<(Hash, &'b [u8])>,
    level: i32,
) -> Encoding {
    let plain = |c: &Candidate<'_>| match c.plain_len {
        Some(_) => Encoding::Given,
        None => Encoding::Plain(codec::compress(c.data, level)),
    };
    let Some((base_id, base_raw)) = base else {
        return plain(c);
    };
    let mut against = |limit: usize| {
        // The frame must leave room for the base id within `limit`.
        let room = limit.checked_sub(codec::DELTA_BASE_LEN)?;
        enc.compress(c.data, base_raw, level, room)
    };
    match c.plain_len {
        Some(n) => match against(n * KEEP_NUM / KEEP_DEN) {
            Some(frame) => Encoding::Delta(codec::delta_payload(&base_id, &frame)),
            None => Encoding::Given,
        },
        None => {
            let Some(frame) = against(c.data.len() * KEEP_NUM / KEEP_DEN) else {
                return plain(c);
            };
            let delta_len = codec::DELTA_BASE_LEN + frame.len();
            if delta_len * CLEAR_WIN <= c.data.len() {
                return Encoding::Delta(codec::delta_payload(&base_id, &frame));
            }
            let z = codec::compress(c.data, level);
            let plain_len = z.as_ref().map_or(c.data.len(), Vec::len);
            if delta_len * KEEP_DEN <= plain_len * KEEP_NUM {
                Encoding::Delta(codec::delta_payload(&base_id, &frame))
            } else {
                Encoding::Plain(z)
            }
        }
    }
}

/// The bases found: for each chunk, a similar stored plain chunk, if one is found; and the
/// checked bytes of those that are pinned and readable.
type Bases = (Vec<Option<Hash>>, HashMap<Hash, Vec<u8>>);

/// For each chunk, a similar stored plain chunk, and the bytes of those that are there.
fn find_bases(
    store: &dyn ChunkStore,
    pin: &Pin,
    chunks: &[Candidate<'_>],
    features: &[Option<SuperFeatures>],
) -> Result<Bases> {
    let none = || (vec![None; chunks.len()], HashMap::new());
    let asked: Vec<usize> = (0..chunks.len())
        .filter(|&i| features[i].is_some())
        .collect();
    if asked.is_empty() {
        return Ok(none());
    }
    let query: Vec<SuperFeatures> = asked.iter().filter_map(|&i| features[i]).collect();
    let found = store.similar(&query)?;
    let mut base_of: Vec<Option<Hash>> = vec![None; chunks.len()];
    for (&i, b) in asked.iter().zip(found) {
        base_of[i] = b.filter(|b| *b != chunks[i].id);
    }
    let mut bases: Vec<Hash> = base_of.iter().flatten().copied().collect();
    if bases.is_empty() {
        return Ok(none());
    }
    bases.sort_unstable();
    bases.dedup();
    // Pinned before the lookup that says they are there, as any chunk an import counts on.
    let gone = store.missing_pinned(&bases, pin)?;
    let present: Vec<Hash> = bases
        .iter()
        .zip(gone)
        .filter(|(_, g)| !g)
        .map(|(b, _)| *b)
        .collect();
    // A store behind a network reads the batch in few requests; one on local disk reads
    // each base on its own, on all cores. A base that went or cannot be read (or is
    // damaged) is not used: its chunks are stored plain.
    let got: Vec<StoredChunk> = if store.batches_reads() {
        store.read_chunks(&present).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot read delta bases; storing the chunks plain");
            Vec::new()
        })
    } else {
        present
            .par_iter()
            .filter_map(|b| store.read_chunk(b).ok())
            .collect()
    };
    let read: HashMap<Hash, Vec<u8>> = got
        .into_par_iter()
        .filter_map(|c| {
            let raw = codec::decode(&c.id, c.codec, &c.payload, c.raw_len as usize).ok()?;
            (Hash::of(&raw) == c.id).then_some((c.id, raw))
        })
        .collect();
    Ok((base_of, read))
}
