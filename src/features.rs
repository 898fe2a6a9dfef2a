//! Resemblance features of a chunk (for delta chunks, `delta.rs`): super-features that two chunks
//! which differ by a small edit very likely share, and unrelated chunks very likely do not.
//!
//! The method is Odess's (Zhang et al., 2021), which made Finesse's and N-transform's
//! features cheap: a Gear rolling hash runs over the chunk (`fp = (fp << 1) + GEAR[byte]`,
//! each value depending on the last 64 bytes), and only the positions where the top
//! [`SAMPLE_BITS`] bits of `fp` are zero are *sampled* (about one in 128, chosen by content,
//! so an edit moves no sample it does not touch). Each sample goes through [`FEATURES`]
//! linear transforms `(m_i * fp + a_i) >> 32`; feature `i` is the largest value transform `i`
//! gave. The features are grouped [`PER_GROUP`] at a time and each group is hashed (BLAKE3,
//! 4 bytes) into a super-feature: [`SUPER_FEATURES`] of them, 12 bytes per chunk. Two chunks
//! are similar when they share any super-feature; one edit changes the few features whose
//! maxima it touched, so most groups survive it.
//!
//! Every constant here is fixed forever once features are stored: the golden vectors in the
//! tests pin them.

/// Linear transforms, hence features, per chunk.
pub const FEATURES: usize = 12;
/// Features hashed together into one super-feature.
pub const PER_GROUP: usize = 4;
/// Super-features per chunk.
pub const SUPER_FEATURES: usize = FEATURES / PER_GROUP;
/// A position is sampled when the top this many bits of the rolling hash are zero (1 in 128).
pub const SAMPLE_BITS: u32 = 7;

/// A chunk's super-features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SuperFeatures(pub [u32; SUPER_FEATURES]);

impl SuperFeatures {
    /// Whether `self` and `other` share a super-feature (at the same place: each is a
    /// different group of features).
    pub fn shares_any(&self, other: &SuperFeatures) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a == b)
    }
}

/// `splitmix64`, the generator the fixed tables are drawn from.
const fn splitmix64(state: u64) -> (u64, u64) {
    let s = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (s, z ^ (z >> 31))
}

/// The Gear table: 256 random 64-bit values (splitmix64 from seed `hoard-gear`).
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut s = u64::from_le_bytes(*b"hoardgea");
    let mut i = 0;
    while i < 256 {
        let (next, v) = splitmix64(s);
        s = next;
        t[i] = v;
        i += 1;
    }
    t
};

/// The transforms' multipliers (odd) and addends.
const TRANSFORMS: [(u64, u64); FEATURES] = {
    let mut t = [(0u64, 0u64); FEATURES];
    let mut s = u64::from_le_bytes(*b"hoardfea");
    let mut i = 0;
    while i < FEATURES {
        let (next, m) = splitmix64(s);
        let (next, a) = splitmix64(next);
        s = next;
        t[i] = (m | 1, a);
        i += 1;
    }
    t
};

/// Bytes after which the rolling hash depends on nothing before them: each step shifts the
/// old value left by one, so a byte's contribution is gone 64 steps later.
const WINDOW: usize = 64;
/// Independent walks a chunk is split into, run side by side (see [`super_features`]).
const LANES: usize = 4;

/// Adds the sample `fp` to `features`.
#[inline(always)]
fn sample(features: &mut [u32; FEATURES], fp: u64) {
    for (f, (m, a)) in features.iter_mut().zip(TRANSFORMS) {
        *f = (*f).max((m.wrapping_mul(fp).wrapping_add(a) >> 32) as u32);
    }
}

/// Walks `data` from rolling hash `fp`, sampling into `features`; returns whether it
/// sampled and the last hash.
fn walk(data: &[u8], mut fp: u64, features: &mut [u32; FEATURES]) -> (bool, u64) {
    let mut sampled = false;
    for &b in data {
        fp = (fp << 1).wrapping_add(GEAR[b as usize]);
        if fp >> (64 - SAMPLE_BITS) == 0 {
            sampled = true;
            sample(features, fp);
        }
    }
    (sampled, fp)
}

/// The rolling hash after `bytes` (at most [`WINDOW`] of them matter).
fn warm(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |fp, &b| (fp << 1).wrapping_add(GEAR[b as usize]))
}

/// The super-features of `data`, or `None` when no position was sampled (a chunk of a few
/// hundred bytes or less may have none; it is then similar to nothing).
///
/// The walk is one chain of dependent steps, so the chunk is cut into four parts walked
/// side by side (the CPU overlaps their steps). Each part after the first starts from the
/// hash of the 64 bytes before it, which is exactly what the one walk over the whole
/// chunk has there: the result is the same (a test checks it against [`super_features_serial`]).
pub fn super_features(data: &[u8]) -> Option<SuperFeatures> {
    let part = data.len() / LANES;
    if part < 4 * WINDOW {
        return super_features_serial(data);
    }
    let (p0, rest) = data.split_at(part);
    let (p1, rest) = rest.split_at(part);
    let (p2, p3) = rest.split_at(part);
    let (mut f0, mut f1, mut f2, mut f3) = (
        0u64,
        warm(&p0[part - WINDOW..]),
        warm(&p1[part - WINDOW..]),
        warm(&p2[part - WINDOW..]),
    );
    let mut features = [[0u32; FEATURES]; LANES];
    let mut sampled = false;
    const SHIFT: u32 = 64 - SAMPLE_BITS;
    for (((&b0, &b1), &b2), &b3) in p0.iter().zip(p1).zip(p2).zip(p3) {
        f0 = (f0 << 1).wrapping_add(GEAR[b0 as usize]);
        f1 = (f1 << 1).wrapping_add(GEAR[b1 as usize]);
        f2 = (f2 << 1).wrapping_add(GEAR[b2 as usize]);
        f3 = (f3 << 1).wrapping_add(GEAR[b3 as usize]);
        // One rarely taken branch for the four lanes (each samples 1 position in 128).
        if (f0 >> SHIFT == 0) | (f1 >> SHIFT == 0) | (f2 >> SHIFT == 0) | (f3 >> SHIFT == 0) {
            sampled = true;
            for (k, fp) in [f0, f1, f2, f3].into_iter().enumerate() {
                if fp >> SHIFT == 0 {
                    sample(&mut features[k], fp);
                }
            }
        }
    }
    // The last part is longer by the remainder of the division.
    let (tail_sampled, _) = walk(&p3[part..], f3, &mut features[3]);
    if !(sampled || tail_sampled) {
        return None;
    }
    let mut merged = [0u32; FEATURES];
    for lane in &features {
        for (m, f) in merged.iter_mut().zip(lane) {
            *m = (*m).max(*f);
        }
    }
    Some(group(&merged))
}

/// [`super_features`] in one walk: the definition.
pub fn super_features_serial(data: &[u8]) -> Option<SuperFeatures> {
    let mut features = [0u32; FEATURES];
    let (sampled, _) = walk(data, 0, &mut features);
    sampled.then(|| group(&features))
}

/// Hashes the features [`PER_GROUP`] at a time into the super-features.
fn group(features: &[u32; FEATURES]) -> SuperFeatures {
    let mut out = [0u32; SUPER_FEATURES];
    for (sf, group) in out.iter_mut().zip(features.chunks_exact(PER_GROUP)) {
        let mut bytes = [0u8; PER_GROUP * 4];
        for (dst, f) in bytes.chunks_exact_mut(4).zip(group) {
            dst.copy_from_slice(&f.to_le_bytes());
        }
        let h = blake3::hash(&bytes);
        *sf = u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes"));
    }
    SuperFeatures(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_in_lanes_gives_what_one_walk_gives() {
        for n in [
            0, 1, 63, 64, 1000, 1023, 1024, 1025, 4096, 16_384, 65_536, 65_539, 262_144,
        ] {
            for seed in 0..4 {
                let r = random(n, seed);
                assert_eq!(super_features(&r), super_features_serial(&r), "random {n}");
                let t = text(n, seed);
                assert_eq!(super_features(&t), super_features_serial(&t), "text {n}");
            }
        }
    }

    /// `n` bytes from splitmix64 seeded with `seed`.
    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            let (next, v) = splitmix64(s);
            s = next;
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Text-like bytes: words from a small vocabulary, so chunks compress and repeat.
    fn text(n: usize, seed: u64) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "block", "inode", "extent", "journal", "super", "group", "bitmap", "table", "entry",
            "record", "page", "index", "root", "leaf", "node", "tree",
        ];
        let mut s = seed;
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            let (next, v) = splitmix64(s);
            s = next;
            out.extend_from_slice(WORDS[(v % 16) as usize].as_bytes());
            out.push(if v & 0x100 == 0 { b' ' } else { b'\n' });
        }
        out.truncate(n);
        out
    }

    #[test]
    fn golden_vectors() {
        // These pin the tables, the sampling and the grouping: stored features must never
        // change meaning. A change here is a format change.
        let cases: [(Vec<u8>, Option<[u32; SUPER_FEATURES]>); 3] = [
            (random(65536, 1), Some([0x2d33f2a9, 0xc3dba0fc, 0x16e931bc])),
            (text(65536, 2), Some([0x7ebbfdf6, 0xaa1901e2, 0x49fe703d])),
            // A run of one byte value rolls to a constant that is never sampled.
            (vec![0u8; 65536], None),
        ];
        for (i, (data, want)) in cases.iter().enumerate() {
            let got = super_features(data).map(|s| s.0);
            assert_eq!(got, *want, "case {i}: {got:x?}");
        }
    }

    #[test]
    fn tiny_or_empty_chunks_have_none() {
        assert_eq!(super_features(&[]), None);
        assert_eq!(super_features(b"x"), None);
    }

    #[test]
    fn a_small_edit_keeps_a_super_feature_and_unrelated_chunks_share_none() {
        let trials = 300u64;
        let (mut kept_flip, mut kept_insert, mut shared_unrelated) = (0, 0, 0);
        for t in 0..trials {
            let base = if t % 2 == 0 {
                random(65536, 100 + t)
            } else {
                text(65536, 100 + t)
            };
            let sf = super_features(&base).unwrap();
            let (_, r) = splitmix64(t);
            // One byte changed somewhere.
            let mut flipped = base.clone();
            let at = (r % 65536) as usize;
            flipped[at] ^= 0x5a;
            kept_flip += usize::from(super_features(&flipped).unwrap().shares_any(&sf));
            // Sixteen bytes inserted somewhere.
            let mut inserted = base.clone();
            let at = ((r >> 20) % 65536) as usize;
            inserted.splice(at..at, random(16, t));
            kept_insert += usize::from(super_features(&inserted).unwrap().shares_any(&sf));
            let other = random(65536, 10_000 + t);
            shared_unrelated += usize::from(super_features(&other).unwrap().shares_any(&sf));
        }
        // Measured: every edited chunk kept a super-feature (300 of 300 both ways); no
        // unrelated pair shared one.
        let need = trials as usize * 95 / 100;
        assert!(
            kept_flip >= need,
            "one byte changed: {kept_flip} of {trials} found"
        );
        assert!(
            kept_insert >= need,
            "16 bytes inserted: {kept_insert} of {trials} found"
        );
        assert_eq!(shared_unrelated, 0, "unrelated chunks taken for similar");
    }
}
