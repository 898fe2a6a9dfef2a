//! Delta chunks (`delta.rs`): a store with `--delta on` keeps a lightly edited copy's chunks
//! as deltas against the original's, every read path rebuilds them byte for byte, gc keeps a
//! base while a delta names it, and fsck names a damaged base with the files behind its
//! deltas (repair re-points it at an intact copy when there is one).

use std::path::Path;
use std::sync::Arc;

use hoard::client::PullOptions;
use hoard::fsck::{FsckOptions, fsck};
use hoard::gc::{GcOptions, gc};
use hoard::hash::Hash;
use hoard::listing;
use hoard::server::{Auth, Limits, Options};
use hoard::store::pack::ENTRY_HEADER_LEN;
use hoard::store::{ChunkStore, LocalStore};
use hoard::{ChunkerParams, StoreConfig, ingest, names};

use super::data;
use super::lifecycle::{chunks_of, get, put};
use super::net::{Api, TestServer, pull, push};
use super::support::{Scratch, b3, hoard, ok};

fn config(delta: bool) -> StoreConfig {
    StoreConfig::new(ChunkerParams::new(4096, 16384, 65536).unwrap(), 1)
        .unwrap()
        .with_delta(delta)
}

/// A random file and a copy with one byte changed every 8 KiB: every chunk of the copy is
/// new to exact dedup, and each is a small edit of one of the original's.
fn pair(len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let v1 = data::random(len, seed);
    let mut v2 = v1.clone();
    for at in (100..v2.len()).step_by(8192) {
        v2[at] ^= 0x5a;
    }
    (v1, v2)
}

fn open(root: &Path, delta: bool) -> LocalStore {
    LocalStore::open(root, Some(config(delta))).unwrap().0
}

#[test]
fn an_edited_copy_is_kept_as_deltas_and_no_worse_without_them() {
    let (v1, v2) = pair(6 << 20, 1);
    let mut stored = Vec::new();
    for delta in [true, false] {
        let s = Scratch::new();
        let store = open(&s.store(), delta);
        put(&store, "v1", &v1);
        let (m, r) = ingest::ingest(&store, &v2[..], &|_| {}).unwrap();
        names::record(&store, "v2", &m).unwrap();
        assert!(r.new_chunks > 0 && r.new_bytes > (v2.len() as u64) * 9 / 10);
        let st = listing::stats(&store).unwrap();
        if delta {
            assert!(
                r.stored_bytes < r.new_bytes / 20,
                "v2's {} new bytes took {} as deltas",
                r.new_bytes,
                r.stored_bytes
            );
            // Nearly all: a chunk the original has no similar chunk for (a file's last) is
            // stored plain.
            assert!(st.delta_chunks >= r.new_chunks * 9 / 10, "{st:?}");
            assert!(st.delta_stored_bytes <= r.stored_bytes);
        } else {
            assert_eq!(st.delta_chunks, 0);
        }
        assert_eq!(get(&store, "v1").unwrap(), v1);
        assert_eq!(get(&store, "v2").unwrap(), v2);
        let f = fsck(&store, &FsckOptions::default(), &|_| {}).unwrap();
        assert!(f.clean, "{f:?}");
        stored.push(r.stored_bytes);
    }
    assert!(stored[0] < stored[1], "with deltas {stored:?}");
}

#[test]
fn every_read_path_rebuilds_deltas() {
    let s = Scratch::new();
    let (v1, v2) = pair(3 << 20, 2);
    let store = Arc::new(open(&s.store(), true));
    put(&*store, "v1", &v1);
    put(&*store, "v2", &v2);
    assert!(listing::stats(&*store).unwrap().delta_chunks > 0);
    let server = TestServer::serving(
        store.clone(),
        Limits::default(),
        Auth::default(),
        Options::default(),
    );
    let api = Api::new(&server);
    // GET whole and a range across several chunks.
    let (status, _, body) = api.call(api.req(reqwest::Method::GET, "/v1/files/v2"));
    assert!(status.is_success());
    assert_eq!(body, v2);
    let (status, _, body) = api.call(
        api.req(reqwest::Method::GET, "/v1/files/v2")
            .header("Range", "bytes=5000-300000"),
    );
    assert_eq!(status, reqwest::StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &v2[5000..=300000]);
    // One chunk by id: its bytes, never the stored delta.
    let m = names::resolve(&*store, "v2").unwrap().manifest;
    let (id, len) = chunks_of(&*store, &m)[3];
    let (status, _, body) = api.call(api.req(reqwest::Method::GET, &format!("/v1/chunks/{id}")));
    assert!(status.is_success());
    assert_eq!(body.len(), len as usize);
    assert_eq!(Hash::of(&body), id);
    // pull
    let out = s.path("pulled");
    pull(&server.client(), "v2", &out, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    server.stop();
    drop(store);
    // export through the CLI, and a copy into a store without deltas.
    let out = s.path("exported");
    ok(hoard(&s.store()).args(["export", "v2"]).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    let other = s.path("other");
    ok(hoard(&other).args([
        "init", "--min", "4K", "--avg", "16K", "--max", "64K", "--delta", "off",
    ]));
    ok(hoard(&other)
        .arg("copy")
        .arg("--from")
        .arg(s.store())
        .arg("--to")
        .arg(&other)
        .arg("v2"));
    let out = s.path("copied");
    ok(hoard(&other).args(["export", "v2"]).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    let st: serde_json::Value =
        serde_json::from_str(&ok(hoard(&other).args(["stats", "--json"]))).unwrap();
    assert_eq!(st["delta_chunks"], 0);
    // The copies were compressed again, not kept as the raw bytes the reads gave.
    assert!(st["stored_bytes"].as_u64().unwrap() < v2.len() as u64 * 11 / 10);
    assert_eq!(b3(&std::fs::read(&out).unwrap()), b3(&v2));
}

#[test]
fn pushes_and_whole_file_puts_to_a_delta_store_store_deltas_on_the_server() {
    let s = Scratch::new();
    let (v1, v2) = pair(3 << 20, 3);
    let server = TestServer::simple(&s.store(), Some(config(true)));
    let (p1, p2) = (s.file("v1", &v1), s.file("v2", &v2));
    let c = server.client();
    push(&c, &p1, "v").unwrap();
    let r2 = push(&c, &p2, "v").unwrap();
    // The client sends plain chunks; the server keeps them as deltas.
    assert!(r2.bytes_sent > v2.len() as u64 / 2);
    let api = Api::new(&server);
    let st = api.stats();
    let deltas = st["delta_chunks"].as_u64().unwrap();
    assert!(deltas > 0 && deltas >= r2.new_chunks * 9 / 10, "{st}");
    let out = s.path("out");
    pull(&c, "v", &out, PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    // A whole-file PUT of another edit is cut on the server, and stored as deltas too.
    let mut v3 = v1.clone();
    for at in (4000..v3.len()).step_by(8192) {
        v3[at] ^= 0x33;
    }
    let (status, _, _) = api.call(
        api.req(reqwest::Method::PUT, "/v1/files/w")
            .body(v3.clone()),
    );
    assert!(status.is_success());
    let more = api.stats()["delta_chunks"].as_u64().unwrap();
    assert!(
        more > deltas,
        "{more} deltas after the PUT, {deltas} before"
    );
    let (_, _, body) = api.call(api.req(reqwest::Method::GET, "/v1/files/w"));
    assert_eq!(body, v3);
}

#[test]
fn gc_keeps_a_base_while_a_delta_names_it_and_frees_both_after() {
    let s = Scratch::new();
    let (v1, v2) = pair(3 << 20, 4);
    let store = open(&s.store(), true);
    put(&store, "v1", &v1);
    put(&store, "v2", &v2);
    let no_grace = GcOptions {
        grace: std::time::Duration::ZERO,
        min_dead: 0.0,
    };
    // v1's chunks are unreferenced now, but v2's deltas name most of them: only those no
    // delta names go.
    let bases = deltas_of(&store, "v2");
    ok_rm(&store, "v1");
    let r = gc(&store, &no_grace).unwrap();
    assert!(
        r.chunks_spared > 0 && r.chunks_freed < r.chunks_spared,
        "{r:?}"
    );
    for (delta, base) in &bases {
        assert!(
            store.locate(base).unwrap().is_some(),
            "base of {delta} freed"
        );
    }
    assert_eq!(get(&store, "v2").unwrap(), v2);
    assert!(
        fsck(&store, &FsckOptions::default(), &|_| {})
            .unwrap()
            .clean
    );
    // Once the last delta goes, its base goes in the same gc.
    ok_rm(&store, "v2");
    let r = gc(&store, &no_grace).unwrap();
    assert!(r.chunks_freed > 0);
    let st = listing::stats(&store).unwrap();
    assert_eq!((st.chunks, st.stored_bytes, st.delta_chunks), (0, 0, 0));
}

fn ok_rm(store: &dyn ChunkStore, name: &str) {
    names::remove(store, name).unwrap();
}

/// Flips one byte of chunk `id`'s payload in its pack.
fn damage(store: &LocalStore, id: &Hash) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let (path, loc) = store.locate(id).unwrap().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = loc.offset + ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len) / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
    f.sync_all().unwrap();
}

/// Chunks of `v2` stored as deltas, and the bases they name.
fn deltas_of(store: &LocalStore, name: &str) -> Vec<(Hash, Hash)> {
    let m = names::resolve(store, name).unwrap().manifest;
    chunks_of(store, &m)
        .into_iter()
        .filter_map(|(id, _)| {
            let (_, loc) = store.locate(&id).unwrap()?;
            Some((id, loc.base?))
        })
        .collect()
}

#[test]
fn fsck_names_a_damaged_base_with_the_files_behind_its_deltas_and_repair_mends_them() {
    let s = Scratch::new();
    let (v1, v2) = pair(2 << 20, 5);
    let store = open(&s.store(), true);
    let m1 = put(&store, "v1", &v1);
    put(&store, "v2", &v2);
    let deltas = deltas_of(&store, "v2");
    assert!(!deltas.is_empty());
    let (delta, base) = deltas[0];

    // An intact second copy of the base, written after the first: the index points at it,
    // and the first stays in its pack as a spare copy.
    let raw = chunks_of(&store, &m1)
        .into_iter()
        .scan(0usize, |at, (id, len)| {
            let r = (id, *at..*at + len as usize);
            *at += len as usize;
            Some(r)
        })
        .find(|(id, _)| *id == base)
        .map(|(_, span)| v1[span].to_vec())
        .unwrap();
    let mut w = store.writer().unwrap();
    w.append(&base, hoard::codec::Codec::Raw, raw.len() as u32, &raw)
        .unwrap();
    w.commit().unwrap();
    drop(w);
    damage(&store, &base);

    let r = fsck(&store, &FsckOptions::default(), &|_| {}).unwrap();
    assert!(!r.clean);
    let base_problem = r
        .problems
        .iter()
        .find(|p| p.subject == base.to_string())
        .expect("the base is reported");
    // v1 holds the base itself, v2 only a delta against it: both are named.
    assert!(
        base_problem.files.iter().any(|f| f.contains("(v1)")),
        "{base_problem:?}"
    );
    assert!(
        base_problem.files.iter().any(|f| f.contains("(v2)")),
        "{base_problem:?}"
    );
    let delta_problem = r
        .problems
        .iter()
        .find(|p| p.subject == delta.to_string())
        .expect("the delta is reported");
    assert!(
        delta_problem.detail.contains(&base.to_string()),
        "{delta_problem:?}"
    );
    assert!(get(&store, "v2").is_err());

    let repair = FsckOptions {
        repair: true,
        ..FsckOptions::default()
    };
    let r = fsck(&store, &repair, &|_| {}).unwrap();
    assert!(r.repair.unwrap().chunks.repointed >= 2);
    let r = fsck(&store, &FsckOptions::default(), &|_| {}).unwrap();
    assert!(r.clean, "{r:?}");
    assert_eq!(get(&store, "v1").unwrap(), v1);
    assert_eq!(get(&store, "v2").unwrap(), v2);
}

#[test]
fn a_damaged_base_without_a_copy_is_dropped_with_its_deltas_and_reimport_heals() {
    let s = Scratch::new();
    let (v1, v2) = pair(2 << 20, 6);
    let store = open(&s.store(), true);
    put(&store, "v1", &v1);
    put(&store, "v2", &v2);
    let (_, base) = deltas_of(&store, "v2")[0];
    damage(&store, &base);
    let repair = FsckOptions {
        repair: true,
        ..FsckOptions::default()
    };
    let r = fsck(&store, &repair, &|_| {}).unwrap();
    assert!(r.damaged_files >= 2, "{r:?}");
    assert!(get(&store, "v2").is_err());
    put(&store, "v1", &v1);
    put(&store, "v2", &v2);
    let r = fsck(&store, &FsckOptions::default(), &|_| {}).unwrap();
    assert!(r.clean, "{r:?}");
    assert_eq!(get(&store, "v1").unwrap(), v1);
    assert_eq!(get(&store, "v2").unwrap(), v2);
}

#[test]
fn the_delta_switch_is_the_stores_and_off_keeps_the_old_config() {
    let s = Scratch::new();
    ok(hoard(&s.store()).args(["init", "--delta", "on"]));
    let out = ok(hoard(&s.store()).args(["stats"]));
    assert!(out.contains("delta chunks on"), "{out}");
    // Asking for the other setting is refused; the store is unchanged.
    let err = super::support::fails(hoard(&s.store()).args(["init", "--delta", "off"]), 1);
    assert!(err.contains("delta chunks on"), "{err}");
    let bad = super::support::fails(hoard(&s.store()).args(["init", "--delta", "maybe"]), 2);
    assert!(bad.contains("maybe"), "{bad}");
    // Off, as every store before delta chunks: its config record is the old one (a unit test
    // in `store/local/index.rs` checks the bytes). The default is the build's.
    let off = s.path("off");
    ok(hoard(&off).args(["init", "--delta", "off"]));
    let out = ok(hoard(&off).args(["stats"]));
    assert!(out.contains("delta chunks off"), "{out}");
    let default = s.path("default");
    ok(hoard(&default).args(["init"]));
    let out = ok(hoard(&default).args(["stats"]));
    let want = if hoard::config::DEFAULT_DELTA {
        "on"
    } else {
        "off"
    };
    assert!(out.contains(&format!("delta chunks {want}")), "{out}");
}

/// The same on a bucket + PostgreSQL store (real SeaweedFS and PostgreSQL, `.ci/remote.sh`):
/// deltas written, read back through batched reads, kept by gc while named, checked by fsck.
#[test]
fn remote_delta_store_writes_reads_collects_and_checks_deltas() {
    let (Some(bucket), Some(index)) = (
        super::engines::bucket("remote_delta_store"),
        super::engines::index("remote_delta_store"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let (v1, v2) = pair(3 << 20, 7);
    let h = || {
        let mut c = hoard(Path::new(&bucket));
        c.arg("--index").arg(&index);
        c
    };
    ok(h().args([
        "init", "--min", "4K", "--avg", "16K", "--max", "64K", "--delta", "on",
    ]));
    ok(h().args(["import", "--name", "v1"]).arg(s.file("v1", &v1)));
    let out = ok(h()
        .args(["import", "--json", "--name", "v2"])
        .arg(s.file("v2", &v2)));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        r["stored_bytes"].as_u64().unwrap() < r["new_bytes"].as_u64().unwrap() / 20,
        "{r}"
    );
    let stats = || -> serde_json::Value {
        serde_json::from_str(&ok(h().args(["stats", "--json"]))).unwrap()
    };
    assert!(stats()["delta_chunks"].as_u64().unwrap() > 0);
    let export = |name: &str, want: &[u8]| {
        let out = s.path("out");
        ok(h().args(["export", name]).arg(&out));
        assert_eq!(std::fs::read(&out).unwrap(), want, "{name}");
    };
    export("v1", &v1);
    export("v2", &v2);
    ok(h().args(["rm", "v1"]));
    ok(h().args(["gc"]));
    export("v2", &v2);
    let f: serde_json::Value = serde_json::from_str(&ok(h().args(["fsck", "--json"]))).unwrap();
    assert_eq!(f["clean"], true, "{f}");
    ok(h().args(["rm", "v2"]));
    ok(h().args(["gc"]));
    let st = stats();
    assert_eq!(
        (st["chunks"].as_u64(), st["delta_chunks"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}

/// A delta entry whose base is not stored (damage, or a hostile pack): reads fail with an
/// error naming the base, fsck reports it, nothing panics or is served.
#[test]
fn a_delta_naming_a_missing_base_is_reported_not_served() {
    let s = Scratch::new();
    let store = open(&s.store(), true);
    let base = data::random(20_000, 8);
    let mut chunk = base.clone();
    chunk[10] ^= 1;
    let id = Hash::of(&chunk);
    let frame = hoard::codec::compress_against(&chunk, &base, 1, chunk.len()).unwrap();
    let missing = Hash::of(&base);
    let payload = hoard::codec::delta_payload(&missing, &frame);
    let mut w = store.writer().unwrap();
    w.append(
        &id,
        hoard::codec::Codec::Delta,
        chunk.len() as u32,
        &payload,
    )
    .unwrap();
    w.commit().unwrap();
    drop(w);
    let err = store.read_chunk(&id).unwrap_err().to_string();
    assert!(
        err.contains(&missing.to_string()) && err.contains("not stored"),
        "{err}"
    );
    let r = fsck(&store, &FsckOptions::default(), &|_| {}).unwrap();
    assert_eq!(r.bad_chunks, 1, "{r:?}");
    assert!(
        r.problems.iter().any(|p| p.detail.contains("not stored")),
        "{r:?}"
    );
}

/// `hoard copy` into a store that keeps deltas runs its delta stage: a source without
/// deltas, copied, takes far less room in the target.
#[test]
fn a_copy_into_a_delta_store_stores_deltas() {
    let s = Scratch::new();
    let (v1, v2) = pair(3 << 20, 9);
    let small = ["--min", "4K", "--avg", "16K", "--max", "64K"];
    ok(hoard(&s.store())
        .arg("init")
        .args(small)
        .args(["--delta", "off"]));
    ok(hoard(&s.store())
        .args(["import", "--name", "v"])
        .arg(s.file("v1", &v1)));
    ok(hoard(&s.store())
        .args(["import", "--name", "v"])
        .arg(s.file("v2", &v2)));
    let target = s.path("target");
    ok(hoard(&target)
        .arg("init")
        .args(small)
        .args(["--delta", "on"]));
    ok(hoard(&target)
        .arg("copy")
        .arg("--from")
        .arg(s.store())
        .arg("--to")
        .arg(&target));
    let st = |store: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(hoard(store).args(["stats", "--json"]))).unwrap()
    };
    let (from, to) = (st(&s.store()), st(&target));
    assert_eq!(from["delta_chunks"], 0);
    assert!(to["delta_chunks"].as_u64().unwrap() > 0, "{to}");
    assert!(
        to["stored_bytes"].as_u64().unwrap() < from["stored_bytes"].as_u64().unwrap() * 6 / 10,
        "{from} {to}"
    );
    for (spec, want) in [("v@1", &v1), ("v", &v2)] {
        let out = s.path("out");
        ok(hoard(&target).args(["export", spec]).arg(&out));
        assert_eq!(&std::fs::read(&out).unwrap(), want, "{spec}");
    }
}
