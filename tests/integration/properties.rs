//! Properties over generated inputs (proptest): any byte sequence round-trips through
//! import/export (both stores) and through push/pull over HTTP.

use std::sync::Arc;

use hoard::client::PullOptions;
use hoard::store::{ChunkStore, LocalStore, MemoryStore};
use hoard::{ingest, restore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::lifecycle::small_chunks;
use super::net::{TestServer, pull, push};
use super::support::Scratch;

/// Byte sequences with the shapes that matter to a chunker: random, runs of one byte,
/// a repeated pattern, and mixtures, from empty to a few hundred KiB.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..70_000),
        (any::<u8>(), 0usize..200_000).prop_map(|(b, n)| vec![b; n]),
        (prop::collection::vec(any::<u8>(), 1..64), 0usize..3_000).prop_map(|(p, n)| p.repeat(n)),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|ps| ps.concat())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn roundtrip(store: &dyn ChunkStore, data: &[u8]) {
    let (m, _) = ingest::ingest(store, data, &|_| {}).unwrap();
    assert_eq!(m.file_id, hoard::Hash::of(data));
    let mut out = Vec::new();
    restore::restore(store, &m, &mut out, &|_| {}).unwrap();
    assert!(
        out == data,
        "export differs from import ({} bytes)",
        data.len()
    );
}

#[test]
fn any_bytes_round_trip_through_import_and_export() {
    let s = Scratch::new();
    let (local, _) = LocalStore::open(&s.store(), Some(small_chunks())).unwrap();
    let memory = MemoryStore::new(small_chunks());
    runner(48)
        .run(&bytes(), |data| {
            roundtrip(&local, &data);
            roundtrip(&memory, &data);
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_bytes_round_trip_through_push_and_pull() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), Some(small_chunks()));
    let c = Arc::new(server.client());
    let n = std::sync::atomic::AtomicU32::new(0);
    runner(16)
        .run(&bytes(), |data| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = s.file("in.bin", &data);
            let name = format!("p{n}");
            push(&c, &p, &name).unwrap();
            let out = s.path("out.bin");
            pull(&c, &name, &out, PullOptions::default()).unwrap();
            assert!(
                std::fs::read(&out).unwrap() == data,
                "pull differs from push"
            );
            Ok(())
        })
        .unwrap();
}
