//! `push` and `pull` against a real server on 127.0.0.1: what crosses the wire, resuming after
//! a kill -9, and many clients at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use hoard::client::{self, PullOptions};
use hoard::store::{ChunkStore, LocalStore};
use hoard::{ChunkerParams, StoreConfig, restore};

use super::data;
use super::net::{ChildServer, TestServer, pull, push, rt};
use super::support::{Scratch, b3};

/// 4/16/64 KiB chunks: a few edits of a 32 MiB file cost well under 2% of it.
fn small_chunks() -> StoreConfig {
    StoreConfig::new(ChunkerParams::new(4096, 16384, 65536).unwrap(), 1).unwrap()
}

#[test]
fn push_v1_then_edited_v2_sends_only_the_changes_and_both_pull_back() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), Some(small_chunks()));
    let c = server.client();
    let v1 = data::mixed(32 << 20, 1);
    let v2 = data::edit(&v1, 10, 2);
    let (p1, p2) = (s.file("v1.img", &v1), s.file("v2.img", &v2));

    let r1 = push(&c, &p1, "disk.img").unwrap();
    assert_eq!(r1.id.to_hex(), b3(&v1));
    assert_eq!(r1.size, v1.len() as u64);
    assert!(r1.new_bytes > 0 && r1.new_bytes <= r1.size);
    assert!(r1.bytes_sent > 0);

    let r2 = push(&c, &p2, "disk.img").unwrap();
    assert_eq!(r2.id.to_hex(), b3(&v2));
    let limit = v2.len() as u64 / 50;
    assert!(
        r2.bytes_sent <= limit,
        "v2 sent {} bytes, over 2% of {}",
        r2.bytes_sent,
        v2.len()
    );
    assert!(r2.new_chunks > 0 && r2.new_chunks < r2.chunks / 10);

    // The same file again: only the manifest crosses.
    let r3 = push(&c, &p2, "disk.img").unwrap();
    assert_eq!(r3.new_chunks, 0);
    assert!(r3.bytes_sent <= 40 * r3.chunks + 128);

    let out1 = s.path("out1.img");
    let got1 = pull(&c, "disk.img@1", &out1, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out1).unwrap(), v1);
    assert_eq!(got1.id.to_hex(), b3(&v1));
    let out2 = s.path("out2.img");
    pull(&c, "disk.img", &out2, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out2).unwrap(), v2);
    assert!(!s.path(".out2.img.hoard-partial").exists());

    // With v1 as a seed, pulling v2 downloads little more than v2's new chunks.
    let out3 = s.path("out3.img");
    let seeded = pull(
        &c,
        &r2.id.to_hex(),
        &out3,
        PullOptions {
            seed: Some(p1.clone()),
            store: None,
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(&out3).unwrap(), v2);
    assert!(
        seeded.downloaded_bytes <= r2.new_bytes,
        "downloaded {} with a seed, v2 brought {} new",
        seeded.downloaded_bytes,
        r2.new_bytes
    );
}

#[test]
fn interrupted_pull_resumes_from_its_partial_file() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), Some(small_chunks()));
    let c = server.client();
    let v = data::mixed(8 << 20, 5);
    let p = s.file("v.img", &v);
    push(&c, &p, "v.img").unwrap();
    // A partial file with the first half right and the rest garbage, as a cut pull leaves.
    let out = s.path("v.out");
    let mut partial = v.clone();
    for b in &mut partial[v.len() / 2..] {
        *b = 0xAA;
    }
    std::fs::write(s.path(".v.out.hoard-partial"), &partial).unwrap();
    let r = pull(&c, "v.img", &out, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), v);
    assert!(r.reused_chunks > 0, "nothing reused from the partial file");
    assert!(
        r.downloaded_bytes < v.len() as u64 * 3 / 4,
        "downloaded {} of {}",
        r.downloaded_bytes,
        v.len()
    );
}

/// Kills the server (SIGKILL) once the first batch of chunks is acknowledged.
struct KillAfterFirstBatch(Mutex<Option<ChildServer>>);

impl client::Progress for KillAfterFirstBatch {
    fn moved(&self, _n: u64) {
        if let Some(server) = self.0.lock().unwrap().take() {
            server.kill();
        }
    }
}

#[test]
fn push_killed_midway_resumes_and_sends_only_what_is_missing() {
    let s = Scratch::new();
    let v = data::random(24 << 20, 9);
    let p = s.file("big.bin", &v);
    let server = ChildServer::start(&s.store());
    let c = client::Client::new(&server.url, None).unwrap();
    let killer = Arc::new(KillAfterFirstBatch(Mutex::new(Some(server))));
    let failed = rt().block_on(client::push(&c, &p, Some("big.bin".into()), killer.clone()));
    assert!(failed.is_err(), "push went through a killed server");

    let server = ChildServer::start(&s.store());
    let c = client::Client::new(&server.url, None).unwrap();
    let stats: serde_json::Value = rt().block_on(async {
        reqwest::get(format!("{}/v1/stats", server.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let stored_before = stats["chunks"].as_u64().unwrap();
    assert!(stored_before > 0, "nothing was durable before the kill");
    let r = push(&c, &p, "big.bin").unwrap();
    let distinct = r.chunks; // random data: every chunk is distinct
    assert_eq!(r.new_chunks, distinct - stored_before);
    assert!(r.bytes_sent < v.len() as u64);
    let out = s.path("back.bin");
    pull(&c, "big.bin", &out, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), v);
}

#[test]
fn eight_clients_pushing_overlapping_files_store_each_chunk_once() {
    let s = Scratch::new();
    let server = TestServer::simple(&s.store(), Some(small_chunks()));
    let base = data::mixed(6 << 20, 11);
    let files: Vec<Vec<u8>> = (0..8u64)
        .map(|i| {
            let mut f = data::edit(&base, 5, 100 + i);
            f.extend_from_slice(&data::random(512 << 10, 200 + i));
            f
        })
        .collect();
    let paths: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| s.file(&format!("f{i}.bin"), f))
        .collect();
    let url = server.url.clone();
    std::thread::scope(|sc| {
        for (i, p) in paths.iter().enumerate() {
            let url = url.clone();
            sc.spawn(move || {
                let c = client::Client::new(&url, None).unwrap();
                let r = push(&c, p, &format!("f{i}.bin")).unwrap();
                assert_eq!(r.id.to_hex(), b3(&std::fs::read(p).unwrap()));
            });
        }
    });
    let c = server.client();
    for (i, f) in files.iter().enumerate() {
        let out = s.path(&format!("back{i}.bin"));
        pull(&c, &format!("f{i}.bin"), &out, PullOptions::default()).unwrap();
        assert_eq!(&std::fs::read(&out).unwrap(), f, "file {i} differs");
    }
    server.stop();

    let store = LocalStore::open_existing(&s.store()).unwrap();
    let mut ids = HashSet::new();
    for m in store.manifests().unwrap() {
        restore::for_each_page(&store, &m, |page| {
            ids.extend(page.chunks.iter().map(|r| r.id));
            Ok(())
        })
        .unwrap();
    }
    let totals = store.chunk_totals().unwrap();
    assert_eq!(totals.chunks, ids.len() as u64);
    let packs = std::fs::read_dir(s.store().join("packs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pack")
        })
        .count() as u64;
    let expected = totals.encoded_bytes + 48 * totals.chunks + 8 * packs;
    assert_eq!(
        store.chunk_data_bytes().unwrap(),
        expected,
        "pack files hold more than one copy of some chunk"
    );
}

#[test]
fn a_corrupt_stored_chunk_is_never_served_and_pull_writes_nothing() {
    let s = Scratch::new();
    let v = data::random(2 << 20, 77);
    let p = s.file("v.bin", &v);
    let server = TestServer::simple(&s.store(), Some(small_chunks()));
    push(&server.client(), &p, "v.bin").unwrap();
    server.stop();
    // Flip one byte in the middle of the (only) pack: inside some chunk's payload.
    let pack = std::fs::read_dir(s.store().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();

    let server = TestServer::simple(&s.store(), None);
    let out = s.path("out.bin");
    let err = pull(&server.client(), "v.bin", &out, PullOptions::default()).unwrap_err();
    assert!(!out.exists(), "a failed pull left {}", out.display());
    let text = format!("{err:#}");
    assert!(text.contains("chunk") || text.contains("server"), "{text}");
    // A plain GET is cut short rather than completed with wrong bytes.
    let got = rt().block_on(async {
        let r = reqwest::get(format!("{}/v1/files/v.bin", server.url))
            .await
            .unwrap();
        r.bytes().await.map(|b| b.to_vec())
    });
    assert!(
        got.is_err() || got.as_ref().unwrap() != &v,
        "corrupt file served whole"
    );
}
