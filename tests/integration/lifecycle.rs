//! Delete and garbage collection: `rm` drops references, gc frees exactly what nothing uses,
//! and never what a pin, an open session or the grace period holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hoard::gc::{GcOptions, gc};
use hoard::hash::Hash;
use hoard::manifest::Manifest;
use hoard::store::{ChunkStore, LocalStore};
use hoard::{ChunkerParams, StoreConfig, fsck, ingest, listing, names, restore};

use super::data;
use super::support::{Scratch, b3, fails, hoard, ok};

pub fn small_chunks() -> StoreConfig {
    // Plain chunks: these tests (and the fault tests) count chunks, bytes and damage exactly
    // as exact dedup keeps them; delta chunks have their own (`delta.rs`).
    StoreConfig::new(ChunkerParams::new(4096, 16384, 65536).unwrap(), 1)
        .unwrap()
        .with_delta(false)
}

/// Imports `data` as `name`.
pub fn put(store: &dyn ChunkStore, name: &str, data: &[u8]) -> Manifest {
    let (m, _) = ingest::ingest(store, data, &|_| {}).unwrap();
    names::record(store, name, &m).unwrap();
    m
}

/// The distinct chunk ids of a file, with their lengths.
pub fn chunks_of(store: &dyn ChunkStore, m: &Manifest) -> Vec<(Hash, u32)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    restore::for_each_page(store, m, |page| {
        for c in page.chunks {
            if seen.insert(c.id) {
                out.push((c.id, c.len));
            }
        }
        Ok(())
    })
    .unwrap();
    out
}

/// Exports `spec` and returns its bytes.
pub fn get(store: &dyn ChunkStore, spec: &str) -> hoard::Result<Vec<u8>> {
    let m = names::resolve(store, spec)?.manifest;
    let mut out = Vec::new();
    restore::restore(store, &m, &mut out, &|_| {})?;
    Ok(out)
}

fn no_grace(min_dead: f64) -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        min_dead,
    }
}

#[test]
fn gc_frees_exactly_what_no_file_uses_and_compacts() {
    let s = Scratch::new();
    let (store, _) = LocalStore::open(&s.store(), Some(small_chunks())).unwrap();
    let base = data::mixed(4 << 20, 1);
    let v2 = data::edit(&base, 6, 2);
    let other = data::random(2 << 20, 3);
    let mb = put(&store, "base", &base);
    let m2 = put(&store, "v2", &v2);
    let mo = put(&store, "other", &other);

    let kept: HashSet<Hash> = chunks_of(&store, &m2)
        .into_iter()
        .chain(chunks_of(&store, &mo))
        .map(|(id, _)| id)
        .collect();
    let only_base: Vec<(Hash, u32)> = chunks_of(&store, &mb)
        .into_iter()
        .filter(|(id, _)| !kept.contains(id))
        .collect();
    assert!(!only_base.is_empty());

    // Stats say what removing `base` frees before it is removed.
    let st = listing::stats(&store).unwrap();
    let usage = st.per_file.iter().find(|f| f.id == mb.file_id).unwrap();
    let expect: u64 = only_base.iter().map(|(_, l)| u64::from(*l)).sum();
    assert_eq!(usage.unique_bytes, expect);
    assert_eq!(usage.names, vec!["base".to_owned()]);

    let removed = names::remove(&store, "base").unwrap();
    assert_eq!(removed.names, vec!["base".to_owned()]);
    assert_eq!(removed.files, vec![mb.file_id]);
    let before = store.chunk_data_bytes().unwrap();
    let r = gc(&store, &no_grace(0.0)).unwrap();
    assert_eq!(r.chunks_freed, only_base.len() as u64);
    assert_eq!(r.chunks_live, kept.len() as u64);
    assert!(r.packs_rewritten + r.packs_deleted >= 1, "{r:?}");
    let after = store.chunk_data_bytes().unwrap();
    assert_eq!(before - after, r.bytes_freed);
    assert!(r.bytes_freed > 0);
    assert_eq!(store.chunk_totals().unwrap().chunks, kept.len() as u64);

    assert_eq!(get(&store, "v2").unwrap(), v2);
    assert_eq!(get(&store, "other").unwrap(), other);
    assert!(get(&store, "base").is_err());
    let f = fsck::fsck(&store, &fsck::FsckOptions::default(), &|_| {}).unwrap();
    assert!(f.clean, "{f:?}");
    assert_eq!(f.unreferenced_entries, 0, "compaction left dead entries");

    // Nothing more to free; a store reopened from disk agrees.
    let again = gc(&store, &no_grace(0.0)).unwrap();
    assert_eq!((again.chunks_freed, again.bytes_freed), (0, 0));
    drop(store);
    let store = LocalStore::open_existing(&s.store()).unwrap();
    assert_eq!(get(&store, "v2").unwrap(), v2);
}

#[test]
fn gc_spares_what_pins_sessions_and_the_grace_period_hold() {
    let s = Scratch::new();
    let (store, _) = LocalStore::open(&s.store(), Some(small_chunks())).unwrap();
    let store: Arc<dyn ChunkStore> = Arc::new(store);
    let x = data::random(1 << 20, 10);
    let mx = put(&*store, "x", &x);
    let ids: Vec<Hash> = chunks_of(&*store, &mx)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let mut refs = Vec::new();
    restore::for_each_page(&*store, &mx, |p| {
        refs.extend(p.chunks);
        Ok(())
    })
    .unwrap();
    names::remove(&*store, "x").unwrap();

    // A pin (an import in progress that was told these are present) holds them.
    let pin = store.guard().pin();
    assert!(store.missing_pinned(&ids, &pin).unwrap().iter().all(|m| !m));
    let r = gc(&*store, &no_grace(0.2)).unwrap();
    assert_eq!((r.chunks_freed, r.chunks_spared), (0, ids.len() as u64));
    drop(pin);

    // An open upload session holds its manifest's chunks; its end lets go.
    let sessions = hoard::upload::session::Sessions::new(store.clone(), Duration::from_secs(3600));
    let flat = hoard::wire::FlatManifest {
        id: mx.file_id,
        size: x.len() as u64,
        chunker: Some(small_chunks().chunker),
        chunks: refs,
    };
    let (progress, missing) = sessions.open(None, &flat, 1 << 20).unwrap();
    assert!(missing.is_empty());
    let r = gc(&*store, &no_grace(0.2)).unwrap();
    assert_eq!(r.chunks_freed, 0, "gc took chunks an open session holds");
    sessions
        .abort(progress.id.parse().unwrap(), &Default::default())
        .unwrap();

    // A plain missing query that said "present" holds them for the grace period.
    store.missing(&ids).unwrap();
    let graceful = GcOptions {
        grace: Duration::from_secs(3600),
        min_dead: 0.2,
    };
    let r = gc(&*store, &graceful).unwrap();
    assert_eq!((r.chunks_freed, r.chunks_spared), (0, ids.len() as u64));
    let r = gc(&*store, &no_grace(0.2)).unwrap();
    assert_eq!(r.chunks_freed, ids.len() as u64);
    assert!(store.missing(&ids).unwrap().iter().all(|m| *m));
}

#[test]
fn rm_of_a_version_or_an_id_keeps_names_pointing_at_stored_files() {
    let s = Scratch::new();
    let (store, _) = LocalStore::open(&s.store(), Some(small_chunks())).unwrap();
    let a1 = data::random(100_000, 20);
    let a2 = data::random(120_000, 21);
    let m1 = put(&store, "a", &a1);
    let m2 = put(&store, "a", &a2);
    put(&store, "alias", &a2);

    // Dropping version 1 removes its file (nothing else names it); a2 stays current.
    let r = names::remove(&store, "a@1").unwrap();
    assert_eq!((r.versions, r.files.clone()), (1, vec![m1.file_id]));
    assert_eq!(get(&store, "a").unwrap(), a2);
    assert!(matches!(
        names::remove(&store, "a@5"),
        Err(hoard::Error::NoSuchVersion { .. })
    ));

    // Removing the file by id prefix drops it from every name; names left empty go.
    let prefix = &m2.file_id.to_hex()[..12];
    let r = names::remove(&store, prefix).unwrap();
    assert_eq!(r.files, vec![m2.file_id]);
    let mut gone = r.names.clone();
    gone.sort();
    assert_eq!(gone, vec!["a".to_owned(), "alias".to_owned()]);
    assert!(store.names().unwrap().is_empty());
    assert!(matches!(
        names::remove(&store, "a"),
        Err(hoard::Error::NotFound(_))
    ));
    let f = fsck::fsck(&store, &fsck::FsckOptions::default(), &|_| {}).unwrap();
    assert!(f.clean && f.broken_names == 0, "{f:?}");
}

#[test]
fn a_name_is_never_pointed_at_a_removed_file() {
    let s = Scratch::new();
    let (store, _) = LocalStore::open(&s.store(), Some(small_chunks())).unwrap();
    let (m, _) = ingest::ingest(&store, &data::random(50_000, 25)[..], &|_| {}).unwrap();
    // An `rm` by id that won the race against the upload naming it.
    names::remove(&store, &m.file_id.to_hex()).unwrap();
    assert!(matches!(
        names::record(&store, "late", &m),
        Err(hoard::Error::NotFound(_))
    ));
    assert!(store.get_name("late").unwrap().is_none());
}

#[test]
fn cli_rm_gc_and_stats_report_what_they_do() {
    let s = Scratch::new();
    let a = data::random(3 << 20, 30);
    let mut b = a[..(2 << 20)].to_vec();
    b.extend_from_slice(&data::random(1 << 20, 31));
    let pa = s.file("a.bin", &a);
    let pb = s.file("b.bin", &b);
    ok(hoard(&s.store()).arg("import").arg(&pa));
    ok(hoard(&s.store()).arg("import").arg(&pb));

    let stats: serde_json::Value =
        serde_json::from_str(&ok(hoard(&s.store()).args(["stats", "--json"]))).unwrap();
    let per_file = stats["per_file"].as_array().unwrap();
    assert_eq!(per_file.len(), 2);
    let of_a = per_file.iter().find(|f| f["names"][0] == "a.bin").unwrap();
    let unique_a = of_a["unique_bytes"].as_u64().unwrap();
    // About the 1 MiB only a holds (one chunk straddles the shared boundary).
    assert!(
        (1 << 20) - 300_000 < unique_a && unique_a < (1 << 20) + 300_000,
        "{unique_a}"
    );
    assert!(ok(hoard(&s.store()).arg("stats")).contains("ONLY IN IT"));

    let rm: serde_json::Value =
        serde_json::from_str(&ok(hoard(&s.store()).args(["rm", "a.bin", "--json"]))).unwrap();
    assert_eq!(rm["names"], serde_json::json!(["a.bin"]));
    assert_eq!(rm["files"], serde_json::json!([b3(&a)]));
    let err = fails(hoard(&s.store()).args(["rm", "a.bin"]), 1);
    assert!(err.contains("a.bin"), "{err}");

    let gc: serde_json::Value = serde_json::from_str(&ok(hoard(&s.store()).args([
        "gc",
        "--json",
        "--min-dead",
        "0",
    ])))
    .unwrap();
    for k in ["chunks_freed", "bytes_freed", "packs_rewritten"] {
        assert!(gc[k].is_u64(), "{k} missing in {gc}");
    }
    assert!(gc["chunks_freed"].as_u64().unwrap() > 0);
    // What gc freed on disk is close to what stats said a alone held (zstd can't shrink random data).
    let freed = gc["bytes_freed"].as_u64().unwrap();
    assert!(
        freed >= unique_a && freed < unique_a + 200_000,
        "{freed} vs {unique_a}"
    );
    let out = s.path("b.out");
    ok(hoard(&s.store()).args(["export", "b.bin"]).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), b);
    let err = fails(hoard(&s.store()).args(["gc", "--min-dead", "2"]), 2);
    assert!(err.contains("between 0 and 1"), "{err}");
    ok(hoard(&s.store()).arg("fsck"));
}
