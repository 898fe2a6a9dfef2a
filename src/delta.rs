//! Stage 4b of import, between compress and pack: a new chunk stored as a delta against a
//! similar stored chunk when that is much smaller than the chunk compressed on its own.
//!
//! For each new chunk: its super-features (`features.rs`); one store call for all of a
//! batch's chunks finds, per chunk, a stored plain chunk sharing a super-feature (its base);
//! the bases are pinned and looked up in one more call (so gc keeps them until the deltas
//! naming them are recorded, after which gc keeps a base while any delta names it), read in
//! one batch and checked against their ids; then, on all cores, each chunk is compressed
//! with its base as zstd's reference prefix ([`codec::compress_against`]) and kept as a
//! delta when the frame is at most [`KEEP_NUM`]/[`KEEP_DEN`] of the chunk's plain encoding.
//! One level only: a base is never a delta, so a read costs at most one extra chunk.
//! Features are recorded for the chunks stored plain, so later chunks can find them.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::codec::{self, Codec};
use crate::error::Result;
use crate::features::{self, SuperFeatures};
use crate::hash::Hash;
use crate::store::{ChunkStore, Pin};

/// A delta is kept only when its payload is at most `KEEP_NUM / KEEP_DEN` of the chunk's
/// plain encoding: a delta costs a read of its base, so a small gain is not worth it.
pub const KEEP_NUM: usize = 3;
/// See [`KEEP_NUM`].
pub const KEEP_DEN: usize = 4;

/// A new chunk for the delta stage.
pub struct Candidate<'a> {
    /// Its id.
    pub id: Hash,
    /// Its bytes.
    pub data: &'a [u8],
    /// Bytes its plain encoding (zstd, or raw) takes.
    pub plain_len: usize,
}

/// What the stage decided for one chunk.
#[derive(Default)]
pub struct Decision {
    /// Its super-features, to record if it is stored plain (`None`: none were sampled).
    pub features: Option<SuperFeatures>,
    /// Its delta payload (base id, then the frame), if it is stored as a delta.
    pub delta: Option<Vec<u8>>,
}

/// Decides, for each of `chunks` in order, its features and whether it is stored as a delta
/// (see the module notes). The bases chosen are pinned with `pin`: hold it until the chunks
/// are committed.
///
/// # Errors
/// Store errors. A base that cannot be read or is damaged is not used (no error).
pub fn decide(
    store: &dyn ChunkStore,
    pin: &Pin,
    chunks: &[Candidate<'_>],
) -> Result<Vec<Decision>> {
    let mut out: Vec<Decision> = chunks
        .par_iter()
        .map(|c| Decision {
            features: features::super_features(c.data),
            delta: None,
        })
        .collect();
    let asked: Vec<usize> = (0..chunks.len())
        .filter(|&i| out[i].features.is_some())
        .collect();
    if asked.is_empty() {
        return Ok(out);
    }
    let query: Vec<SuperFeatures> = asked
        .iter()
        .map(|&i| out[i].features.expect("asked has features"))
        .collect();
    let found = store.similar(&query)?;
    let mut base_of: Vec<Option<Hash>> = vec![None; chunks.len()];
    for (&i, b) in asked.iter().zip(found) {
        base_of[i] = b.filter(|b| *b != chunks[i].id);
    }
    let mut bases: Vec<Hash> = base_of.iter().flatten().copied().collect();
    if bases.is_empty() {
        return Ok(out);
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
    let read: HashMap<Hash, Vec<u8>> = match store.read_chunks(&present) {
        Ok(got) => got
            .into_par_iter()
            .filter_map(|c| {
                let raw = codec::decode(&c.id, c.codec, &c.payload, c.raw_len as usize).ok()?;
                (Hash::of(&raw) == c.id).then_some((c.id, raw))
            })
            .collect(),
        // A base that went or cannot be read: store these chunks plain.
        Err(e) => {
            tracing::debug!(error = %e, "cannot read delta bases; storing the chunks plain");
            HashMap::new()
        }
    };
    let level = store.config().level;
    let deltas: Vec<(usize, Vec<u8>)> = (0..chunks.len())
        .into_par_iter()
        .filter_map(|i| {
            let base = base_of[i]?;
            let base_raw = read.get(&base)?;
            let c = &chunks[i];
            let limit = c.plain_len * KEEP_NUM / KEEP_DEN;
            // The frame is at most `limit - DELTA_BASE_LEN` so the payload is within `limit`.
            let room = limit.checked_sub(codec::DELTA_BASE_LEN)?;
            let frame = codec::compress_against(c.data, base_raw, level, room)?;
            Some((i, codec::delta_payload(&base, &frame)))
        })
        .collect();
    for (i, payload) in deltas {
        out[i].delta = Some(payload);
    }
    Ok(out)
}

/// The codec and payload for a chunk: its delta if the stage made one, else its plain form.
pub fn choose(decision: &mut Decision, plain: Option<Vec<u8>>) -> (Codec, Option<Vec<u8>>) {
    match decision.delta.take() {
        Some(d) => {
            // A delta is never a base: its features are not recorded.
            decision.features = None;
            (Codec::Delta, Some(d))
        }
        None => match plain {
            Some(z) => (Codec::Zstd, Some(z)),
            None => (Codec::Raw, None),
        },
    }
}
