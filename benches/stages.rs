//! Per-stage throughput on generated data: FastCDC alone, BLAKE3 alone, zstd alone, pack
//! append, and the index asked about 1 000 000 ids. These are the limits the end-to-end
//! numbers (`benches/e2e.rs`) are judged against.
//!
//! `cargo bench --bench stages`; to compare a change: `cargo bench --bench stages --
//! --save-baseline before`, change, then `cargo bench --bench stages -- --baseline before`.

// criterion's macros generate undocumented functions; a bench binary has no API to document.
#![allow(missing_docs)]

#[path = "../tests/integration/data.rs"]
mod data;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hoard::chunker::Cutter;
use hoard::codec::{self, Codec};
use hoard::config::DEFAULT_LEVEL;
use hoard::store::PackSink;
use hoard::store::local::LocalSink;
use hoard::store::{ChunkStore, LocalStore};
use hoard::{ChunkerParams, Hash};

/// 64 MiB of mixed data (a third random, a third text, a third records).
const INPUT: usize = 64 << 20;
/// Ids asked of the index in one `missing` call.
const LOOKUPS: usize = 1_000_000;

fn spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut pos = 0;
    Cutter::new(ChunkerParams::DEFAULT)
        .lengths(data)
        .into_iter()
        .map(|l| {
            pos += l;
            (pos - l, l)
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let input = data::mixed(INPUT, 1);
    let chunks = spans(&input);
    let mut g = c.benchmark_group("stages");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(INPUT as u64));

    let cutter = Cutter::new(ChunkerParams::DEFAULT);
    g.bench_function("fastcdc_64MiB", |b| {
        b.iter(|| cutter.lengths(black_box(&input)))
    });
    g.bench_function("blake3_chunks_64MiB", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|&(o, l)| Hash::of(&input[o..o + l]))
                .fold(0u8, |acc, h| acc ^ h.as_bytes()[0])
        })
    });
    // Resemblance features (delta chunks): one thread, every chunk; in lanes (what the
    // pipeline runs) and in one walk (the definition).
    g.bench_function("super_features_chunks_64MiB", |b| {
        b.iter(|| {
            chunks
                .iter()
                .filter_map(|&(o, l)| hoard::features::super_features(&input[o..o + l]))
                .fold(0u32, |acc, f| acc ^ f.0[0])
        })
    });
    g.bench_function("super_features_serial_chunks_64MiB", |b| {
        b.iter(|| {
            chunks
                .iter()
                .filter_map(|&(o, l)| hoard::features::super_features_serial(&input[o..o + l]))
                .fold(0u32, |acc, f| acc ^ f.0[0])
        })
    });
    g.bench_function(format!("zstd_level{DEFAULT_LEVEL}_chunks_64MiB"), |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|&(o, l)| {
                    codec::compress(&input[o..o + l], DEFAULT_LEVEL).map_or(l, |z| z.len())
                })
                .sum::<usize>()
        })
    });
    // Delta chunks: every chunk against an edited copy of itself (one byte changed in every
    // 4 KiB), compressed and decoded; throughput counts the chunks' bytes.
    let edited: Vec<u8> = input
        .iter()
        .enumerate()
        .map(|(i, &b)| if i % 4096 == 7 { b ^ 0x5a } else { b })
        .collect();
    g.bench_function(format!("delta_level{DEFAULT_LEVEL}_chunks_64MiB"), |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|&(o, l)| {
                    let (data, base) = (&edited[o..o + l], &input[o..o + l]);
                    codec::compress_against(data, base, DEFAULT_LEVEL, l).map_or(l, |z| z.len())
                })
                .sum::<usize>()
        })
    });
    let deltas: Vec<(Hash, Vec<u8>, usize, usize)> = chunks
        .iter()
        .filter_map(|&(o, l)| {
            let (data, base) = (&edited[o..o + l], &input[o..o + l]);
            let z = codec::compress_against(data, base, DEFAULT_LEVEL, l)?;
            Some((Hash::of(data), z, o, l))
        })
        .collect();
    g.bench_function("delta_decode_chunks_64MiB", |b| {
        let mut out = vec![0u8; 1 << 20];
        b.iter(|| {
            for (id, z, o, l) in &deltas {
                codec::decode_against_into(id, z, &input[*o..*o + *l], &mut out[..*l])
                    .expect("decodes");
            }
        })
    });
    let encoded: Vec<(Hash, Option<Vec<u8>>, usize, usize)> = chunks
        .iter()
        .map(|&(o, l)| {
            (
                Hash::of(&input[o..o + l]),
                codec::compress(&input[o..o + l], DEFAULT_LEVEL),
                o,
                l,
            )
        })
        .collect();
    g.bench_function("pack_append_fsync_64MiB", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |dir| {
                let mut w = LocalSink::create(dir.path(), 1).expect("pack");
                for (id, z, o, l) in &encoded {
                    match z {
                        Some(z) => w.append(id, Codec::Zstd, *l as u32, z),
                        None => w.append(id, Codec::Raw, *l as u32, &input[*o..*o + *l]),
                    }
                    .expect("append");
                }
                w.sync().expect("sync");
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // The index: 500 000 chunks stored, asked about 1 000 000 ids (half of them present).
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = LocalStore::open(&dir.path().join("s"), None).expect("store");
    let ids: Vec<Hash> = (0..LOOKUPS as u64)
        .map(|i| Hash::of(&i.to_le_bytes()))
        .collect();
    let mut w = store.writer().expect("writer");
    for id in ids.iter().step_by(2) {
        w.append(id, Codec::Raw, 1, b"x").expect("append");
    }
    w.commit().expect("commit");
    drop(w);
    let mut g = c.benchmark_group("index");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("missing_1M_ids", |b| {
        b.iter(|| {
            store
                .missing(black_box(&ids))
                .expect("missing")
                .iter()
                .filter(|m| **m)
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
