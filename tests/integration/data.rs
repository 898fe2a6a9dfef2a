//! Generated inputs shared by the tests and the benchmarks: deterministic for a seed.
//!
//! `mixed` cycles 1 MiB segments of three kinds (random bytes, English-like text, structured
//! CSV records), so a file is a third of each throughout, like a disk image or a dump.
//! `edit` applies small inserts, deletes and overwrites at random places.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const SEGMENT: usize = 1 << 20;

/// `len` bytes of random data.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn words(rng: &mut StdRng) -> Vec<String> {
    (0..4000)
        .map(|_| {
            let n = rng.random_range(2..10);
            (0..n)
                .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
                .collect()
        })
        .collect()
}

/// `len` bytes, a third random, a third text, a third records, in 1 MiB segments.
pub fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = words(&mut rng);
    let mut out = Vec::with_capacity(len + SEGMENT);
    let mut kind = 0;
    let mut record = 0u64;
    while out.len() < len {
        let end = out.len() + SEGMENT;
        match kind % 3 {
            0 => {
                let start = out.len();
                out.resize(end, 0);
                rng.fill_bytes(&mut out[start..]);
            }
            1 => {
                while out.len() < end {
                    // Skewed word choice, like natural text: a few words are very common.
                    let r: f64 = rng.random();
                    let w = &vocab[(r * r * r * vocab.len() as f64) as usize];
                    out.extend_from_slice(w.as_bytes());
                    out.push(if rng.random_range(0..12) == 0 {
                        b'\n'
                    } else {
                        b' '
                    });
                }
            }
            _ => {
                while out.len() < end {
                    record += 1;
                    let line = format!(
                        "{record},2026-{:02}-{:02}T{:02}:{:02}:{:02}Z,user{:05},{}.{:02},{}\n",
                        rng.random_range(1..13),
                        rng.random_range(1..29),
                        rng.random_range(0..24),
                        rng.random_range(0..60),
                        rng.random_range(0..60),
                        rng.random_range(0..20000),
                        rng.random_range(0..100000),
                        rng.random_range(0..100),
                        ["OK", "PENDING", "FAILED", "REFUNDED"][rng.random_range(0..4)],
                    );
                    out.extend_from_slice(line.as_bytes());
                }
            }
        }
        kind += 1;
    }
    out.truncate(len);
    out
}

/// A copy of `data` with `n` small edits (1..=64 bytes each): inserts, deletes, overwrites.
pub fn edit(data: &[u8], n: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at: Vec<usize> = (0..n)
        .map(|_| rng.random_range(0..data.len().max(1)))
        .collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(data.len() + n * 64);
    let mut pos = 0;
    for p in at {
        if p < pos {
            continue;
        }
        out.extend_from_slice(&data[pos..p]);
        pos = p;
        let len = rng.random_range(1..=64usize);
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        match rng.random_range(0..3) {
            0 => out.extend_from_slice(&bytes),     // insert
            1 => pos = (pos + len).min(data.len()), // delete
            _ => {
                out.extend_from_slice(&bytes); // overwrite
                pos = (pos + len).min(data.len());
            }
        }
    }
    out.extend_from_slice(&data[pos..]);
    out
}
