//! Several processes on one bucket store (real SeaweedFS and PostgreSQL, from `.ci/remote.sh`):
//! pins recorded under one process's lease hold against another process's gc, a lookup revives
//! what gc condemned, a lapsed lease holds nothing. The test process opens the store through
//! the library; gc runs as a `hoard` process of its own.

use std::time::Duration;

use hoard::Hash;
use hoard::store::{ChunkStore, RemoteStore};
use serde_json::Value;

use crate::integration::data::{edit, mixed};
use crate::integration::engines;
use crate::integration::remote_store::{json, remote};
use crate::integration::support::{Scratch, ok};

/// Imports `f` as `f` and removes it again: its chunks are stored and unreferenced.
fn garbage(bucket: &str, index: &str, f: &std::path::Path) {
    ok(remote(bucket, index)
        .arg("import")
        .arg(f)
        .args(["--name", "f"]));
    ok(remote(bucket, index).args(["rm", "f"]));
}

/// A store with one file (`f` in the returned scratch directory) imported and removed.
/// Returns the bucket, the index and the chunks' ids.
fn store_with_garbage(test: &str, seed: u64) -> Option<(Scratch, String, String, Vec<Hash>)> {
    let (Some(bucket), Some(index)) = (engines::bucket(test), engines::index(test)) else {
        return None;
    };
    let s = Scratch::new();
    let f = s.file("f", &mixed(2 << 20, seed));
    ok(remote(&bucket, &index).arg("init"));
    garbage(&bucket, &index, &f);
    let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    let ids = ids_of(&store);
    assert!(ids.len() > 10, "{} chunks", ids.len());
    Some((s, bucket, index, ids))
}

fn gc(bucket: &str, index: &str, grace: &str) -> Value {
    json(&ok(
        remote(bucket, index).args(["gc", "--grace", grace, "--json"])
    ))
}

fn present(store: &RemoteStore, ids: &[Hash]) -> usize {
    store.lookup(ids).unwrap().iter().filter(|m| !**m).count()
}

#[test]
fn remote_gc_in_another_process_spares_what_a_pin_holds() {
    let Some((_s, bucket, index, ids)) = store_with_garbage("remote_shared_pin", 51) else {
        return;
    };
    // This process counts on the chunks (as an import that found them present does), while
    // another process runs gc with no grace.
    let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    let pin = store.guard().pin();
    let missing = store.missing_pinned(&ids, &pin).unwrap();
    assert!(missing.iter().all(|m| !m), "all present before gc");
    let r = gc(&bucket, &index, "0s");
    assert_eq!(r["chunks_freed"], 0, "{r}");
    assert_eq!(r["chunks_spared"], ids.len() as u64, "{r}");
    assert_eq!(present(&store, &ids), ids.len());
    // Let go: the next gc frees them all.
    drop(pin);
    let r = gc(&bucket, &index, "0s");
    assert_eq!(r["chunks_freed"], ids.len() as u64, "{r}");
    assert_eq!(present(&store, &ids), 0);
}

#[test]
fn remote_lookup_revives_what_gc_condemned_and_grace_counts_from_then() {
    let Some((_s, bucket, index, ids)) = store_with_garbage("remote_shared_revive", 52) else {
        return;
    };
    let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    // The first gc condemns every chunk and spares them: condemned less than the grace ago.
    let r = gc(&bucket, &index, "2s");
    assert_eq!(r["chunks_freed"], 0, "{r}");
    assert_eq!(r["chunks_spared"], ids.len() as u64, "{r}");
    std::thread::sleep(Duration::from_millis(2500));
    // A plain lookup (a client's missing query) says present and revives them: the grace
    // starts again from the next gc's mark.
    assert!(store.missing(&ids).unwrap().iter().all(|m| !m));
    let r = gc(&bucket, &index, "2s");
    assert_eq!(r["chunks_freed"], 0, "revived chunks are spared again: {r}");
    std::thread::sleep(Duration::from_millis(2500));
    // Nothing asked since: condemned a grace ago, they go.
    let r = gc(&bucket, &index, "2s");
    assert_eq!(r["chunks_freed"], ids.len() as u64, "{r}");
    assert_eq!(present(&store, &ids), 0);
    let f = json(&ok(remote(&bucket, &index).args(["fsck", "--json"])));
    assert_eq!(f["clean"], true, "{f}");
}

#[test]
fn remote_pins_of_a_lapsed_lease_hold_nothing_and_fail_their_next_use() {
    let Some((s, bucket, index, ids)) = store_with_garbage("remote_shared_lapse", 53) else {
        return;
    };
    let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    let (first, rest) = ids.split_at(ids.len() / 2);
    let pin = store.guard().pin();
    store.missing_pinned(first, &pin).unwrap();
    // The session that holds this process's lease ends (as when its connection breaks); the
    // call waits until that backend is gone, so its lock is.
    engines::sql(
        &index,
        "SELECT pg_terminate_backend(l.pid, 10000) FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid::int8 = 1752129906",
    );
    // Another process's gc no longer sees the pin.
    let r = gc(&bucket, &index, "0s");
    assert_eq!(r["chunks_freed"], ids.len() as u64, "{r}");
    // The pin made under the lost lease fails its next use, saying why (once this process
    // has seen its connection close: bounded wait).
    let t = std::time::Instant::now();
    let e = loop {
        match store.missing_pinned(rest, &pin) {
            Err(e) => break e.to_string(),
            Ok(_) => {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "the lost lease went unnoticed"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(e.contains("lost the lease"), "{e}");
    // A new pin takes a new lease, and holds against gc again.
    garbage(&bucket, &index, &s.path("f"));
    let again = store.guard().pin();
    assert!(
        store
            .missing_pinned(&ids, &again)
            .unwrap()
            .iter()
            .all(|m| !m)
    );
    let r = gc(&bucket, &index, "0s");
    assert_eq!(r["chunks_freed"], 0, "{r}");
    assert_eq!(r["chunks_spared"], ids.len() as u64, "{r}");
}

/// Waits (up to 30 s) until the replica of `store` holds `n` ids.
fn replica_holds(store: &RemoteStore, n: usize) {
    let t = std::time::Instant::now();
    while store.id_replica_len() != Some(n) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the id replica holds {:?}, not {n}",
            store.id_replica_len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids_of(store: &RemoteStore) -> Vec<Hash> {
    let mut ids = Vec::new();
    store
        .for_each_chunk(&mut |id| {
            ids.push(*id);
            Ok(())
        })
        .unwrap();
    ids
}

#[test]
fn remote_server_id_replica_answers_as_the_index_and_never_present_after_gc() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_replica"),
        engines::index("remote_replica"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let f = s.file("f", &mixed(2 << 20, 61));
    let g = s.file("g", &mixed(2 << 20, 62));
    ok(remote(&bucket, &index).arg("init"));
    ok(remote(&bucket, &index)
        .arg("import")
        .arg(&f)
        .args(["--name", "f"]));
    // A server's store keeps the replica: built in the background, then it answers.
    let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    store.for_server();
    let f_ids = ids_of(&store);
    replica_holds(&store, f_ids.len());
    let unknown: Vec<Hash> = (0u32..500).map(|i| Hash::of(&i.to_le_bytes())).collect();
    let asked: Vec<Hash> = f_ids.iter().chain(&unknown).copied().collect();
    let want: Vec<bool> = f_ids
        .iter()
        .map(|_| false)
        .chain(unknown.iter().map(|_| true))
        .collect();
    assert_eq!(store.missing(&asked).unwrap(), want);
    // What another process commits is seen at the next lookup (the commit feed).
    ok(remote(&bucket, &index)
        .arg("import")
        .arg(&g)
        .args(["--name", "g"]));
    let all = ids_of(&store);
    let g_ids: Vec<Hash> = all
        .iter()
        .filter(|id| !f_ids.contains(id))
        .copied()
        .collect();
    assert!(!g_ids.is_empty());
    assert!(store.missing(&g_ids).unwrap().iter().all(|m| !m));
    assert_eq!(store.id_replica_len(), Some(all.len()));
    // gc in another process removes every chunk: no lookup says present after it.
    ok(remote(&bucket, &index).args(["rm", "f"]));
    ok(remote(&bucket, &index).args(["rm", "g"]));
    let r = gc(&bucket, &index, "0s");
    assert_eq!(r["chunks_freed"], all.len() as u64, "{r}");
    assert!(store.missing(&all).unwrap().iter().all(|m| *m));
    // The replica is built again, and answers again.
    replica_holds(&store, 0);
    ok(remote(&bucket, &index)
        .arg("import")
        .arg(&f)
        .args(["--name", "f"]));
    assert!(store.missing(&f_ids).unwrap().iter().all(|m| !m));
    replica_holds(&store, f_ids.len());
}

#[test]
fn remote_fsck_while_another_process_imports_finds_nothing_wrong() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_fsck_busy"),
        engines::index("remote_fsck_busy"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let files: Vec<_> = (0..8u64)
        .map(|i| s.file(&format!("f{i}"), &mixed(3 << 20, 70 + i)))
        .collect();
    ok(remote(&bucket, &index).arg("init"));
    let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    // Another process writes a pack and records it, again and again, while this one checks
    // the store: no check may count its entries as unreferenced or its packs as missing.
    let checks = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for f in &files {
                ok(remote(&bucket, &index)
                    .arg("import")
                    .arg(f)
                    .args(["--name", "f"]));
            }
        });
        let mut checks = 0;
        while !writer.is_finished() && checks < 200 {
            let c = store.check_chunks(false, &|_| {}).unwrap();
            assert!(
                c.bad.is_empty() && c.damaged_packs.is_empty(),
                "{:?} {:?}",
                c.bad,
                c.damaged_packs
            );
            assert_eq!(
                c.unreferenced, 0,
                "check {checks} while writing took entries of {} packs for unreferenced",
                c.packs
            );
            checks += 1;
        }
        writer.join().unwrap();
        checks
    });
    assert!(checks > 0);
    let c = store.check_chunks(false, &|_| {}).unwrap();
    assert_eq!((c.unreferenced, c.bad.len()), (0, 0), "{:?}", c.bad);
    assert_eq!(c.chunks_ok, ids_of(&store).len() as u64);
}

#[test]
fn remote_session_completed_on_two_servers_at_once_records_one_version() {
    use std::sync::Arc;

    use hoard::upload::session::Sessions;

    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_session_race"),
        engines::index("remote_session_race"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let f = s.file("f", &mixed(6 << 20, 141));
    ok(remote(&bucket, &index).arg("init"));
    ok(remote(&bucket, &index)
        .arg("import")
        .arg(&f)
        .args(["--name", "src"]));
    // Two servers' stores and sessions on one store; the file's chunks are stored but its
    // manifest is not, so completing checks the whole file (a wide window for a race).
    let open = || {
        let (store, _) = RemoteStore::open(&bucket, &index, false, None).unwrap();
        Arc::new(store) as Arc<dyn ChunkStore>
    };
    let (a, b) = (open(), open());
    let m = a.get_name("src").unwrap().unwrap().versions[0].file_id;
    let manifest = a.get_manifest(&m).unwrap().unwrap();
    let mut chunks = Vec::new();
    hoard::restore::for_each_page(&*a, &manifest, |p| {
        chunks.extend(p.chunks);
        Ok(())
    })
    .unwrap();
    let flat = hoard::wire::FlatManifest {
        id: manifest.file_id,
        size: manifest.file_len,
        chunker: None,
        chunks,
    };
    for round in 0..3 {
        assert!(a.remove_manifest(&manifest.file_id).unwrap());
        let name = format!("x{round}");
        let (sa, sb) = (
            Sessions::new(a.clone(), Duration::from_secs(3600)),
            Sessions::new(b.clone(), Duration::from_secs(3600)),
        );
        let (progress, missing) = sa.open(Some(&name), &flat, 1 << 20).unwrap();
        assert!(missing.is_empty());
        let id = progress.id.parse().unwrap();
        let barrier = std::sync::Barrier::new(2);
        let done: Vec<bool> = std::thread::scope(|scope| {
            let ends = [&sa, &sb].map(|sessions| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    sessions.complete(id, &Default::default()).unwrap().1
                })
            });
            ends.map(|e| e.join().unwrap()).to_vec()
        });
        assert_eq!(
            done.iter().filter(|d| **d).count(),
            1,
            "round {round}: exactly one call completes the session: {done:?}"
        );
        let versions = a.get_name(&name).unwrap().unwrap().versions.len();
        assert_eq!(versions, 1, "round {round}: one completion, one version");
    }
}

#[test]
fn remote_chunk_totals_are_kept_as_the_index_changes_and_read_without_a_scan() {
    let Some((s, bucket, index, _)) = store_with_garbage("remote_totals", 61) else {
        return;
    };
    // What a scan of the chunk table says, beside the kept totals and `stats`.
    let scanned = || {
        engines::sql_value(
            &index,
            "SELECT count(*) || ' ' || coalesce(sum(raw_len::int8), 0) || ' ' || \
             coalesce(sum(stored_len::int8), 0) FROM chunks",
        )
    };
    let kept = || {
        engines::sql_value(
            &index,
            "SELECT sum(chunks) || ' ' || sum(raw_bytes) || ' ' || sum(stored_bytes) \
             FROM chunk_totals",
        )
    };
    let stats = || {
        let v = json(&ok(remote(&bucket, &index).args(["stats", "--json"])));
        format!("{} {}", v["chunks"], v["unique_bytes"])
    };
    let same = |step: &str| {
        let (scan, totals) = (scanned(), kept());
        assert_eq!(scan, totals, "after {step}");
        eprintln!("after {step}: {scan}");
        scan
    };
    // Inserts (and the same chunks again: conflicts), deletes and moves (gc, compaction) ...
    let a = mixed(3 << 20, 62);
    let b = edit(&a, 20, 63);
    ok(remote(&bucket, &index).arg("import").arg(s.file("a", &a)));
    ok(remote(&bucket, &index).arg("import").arg(s.file("b", &b)));
    same("two imports");
    ok(remote(&bucket, &index).args(["rm", "a"]));
    gc(&bucket, &index, "0s");
    let after_gc = same("rm and gc");
    ok(remote(&bucket, &index).args(["gc", "--grace", "0s", "--min-dead", "0"]));
    assert_eq!(
        same("compaction"),
        after_gc,
        "compaction moves, changes no total"
    );
    // ... `stats` reads them, and folds them into one row when there are many.
    engines::sql(
        &index,
        "INSERT INTO chunk_totals SELECT 0, 0, 0 FROM generate_series(1, 300)",
    );
    let st = stats();
    assert!(
        after_gc.starts_with(&format!("{st} ")),
        "stats {st}, the table {after_gc}"
    );
    assert_eq!(
        engines::sql_value(&index, "SELECT count(*) FROM chunk_totals"),
        "1"
    );
    same("a fold");
    // A rebuild of the index from the bucket empties the table (TRUNCATE) and re-indexes.
    ok(remote(&bucket, &index).args(["fsck", "--repair", "--rebuild-index"]));
    same("a rebuild");
}
