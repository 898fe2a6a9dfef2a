//! Damage on disk: flipped bytes and cut-off files in packs and in the index. fsck finds
//! every damaged chunk and names the files it affects; exporting an affected file fails
//! loudly; everything else still exports byte for byte; repair plus re-import heals.
//!
//! Trials per fault type: `TRIALS` here, `HOARD_LONG_TESTS=1` for 50.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hoard::fsck::{FsckOptions, FsckReport, fsck};
use hoard::hash::Hash;
use hoard::store::LocalStore;
use hoard::store::pack::{ChunkLoc, ENTRY_HEADER_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data;
use super::lifecycle::{chunks_of, get, put, small_chunks};
use super::support::{Scratch, hoard, ok};

/// Trials per fault type: 10, or 50 with `HOARD_LONG_TESTS=1`.
pub fn trials() -> u64 {
    if std::env::var_os("HOARD_LONG_TESTS").is_some() {
        50
    } else {
        10
    }
}

/// A store with `n` files of distinct random data (plus one shared block), and their bytes.
fn populate(root: &Path, n: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let (store, _) = LocalStore::open(root, Some(small_chunks())).unwrap();
    let shared = data::random(100_000, seed);
    (0..n)
        .map(|i| {
            let mut v = data::random(300_000 + (i as usize) * 50_000, seed * 100 + i);
            v.extend_from_slice(&shared);
            let name = format!("f{i}");
            put(&store, &name, &v);
            (name, v)
        })
        .collect()
}

/// Where each chunk is stored.
type Locations = HashMap<Hash, (PathBuf, ChunkLoc)>;
/// Which files use each chunk.
type Users = HashMap<Hash, Vec<String>>;

/// Where every stored chunk lives, and which files use it.
fn layout(store: &LocalStore) -> (Locations, Users) {
    let mut locs = HashMap::new();
    let mut users: HashMap<Hash, Vec<String>> = HashMap::new();
    for (name, rec) in hoard::store::ChunkStore::names(store).unwrap() {
        let id = rec.versions.last().unwrap().file_id;
        let m = hoard::store::ChunkStore::get_manifest(store, &id)
            .unwrap()
            .unwrap();
        for (c, _) in chunks_of(store, &m) {
            locs.insert(c, store.locate(&c).unwrap().unwrap());
            users.entry(c).or_default().push(name.clone());
        }
    }
    (locs, users)
}

fn check(root: &Path) -> FsckReport {
    let store = LocalStore::open_existing(root).unwrap();
    fsck(&store, &FsckOptions::default(), &|_| {}).unwrap()
}

/// After damage that hit exactly `bad`: fsck names them, affected files fail to export,
/// the others export whole; repair and re-import of the affected originals heal the store.
fn assert_found_and_healed(
    root: &Path,
    files: &[(String, Vec<u8>)],
    bad: &HashSet<Hash>,
    users: &HashMap<Hash, Vec<String>>,
) {
    let r = check(root);
    let found: HashSet<Hash> = r
        .problems
        .iter()
        .filter(|p| p.kind == "bad_chunk")
        .map(|p| p.subject.parse().unwrap())
        .collect();
    assert_eq!(&found, bad, "fsck missed or invented damage: {r:?}");
    assert_eq!(r.clean, bad.is_empty());
    let affected: HashSet<&str> = bad
        .iter()
        .flat_map(|id| users[id].iter().map(String::as_str))
        .collect();
    assert_eq!(r.damaged_files, affected.len() as u64);
    let store = LocalStore::open_existing(root).unwrap();
    for (name, v) in files {
        match get(&store, name) {
            Ok(got) => {
                assert!(
                    !affected.contains(name.as_str()),
                    "{name} exported despite damage"
                );
                assert_eq!(&got, v, "{name} exported wrong bytes");
            }
            Err(e) => assert!(affected.contains(name.as_str()), "{name} failed: {e}"),
        }
    }
    let opts = FsckOptions {
        repair: true,
        ..FsckOptions::default()
    };
    let r = fsck(&store, &opts, &|_| {}).unwrap();
    let rep = r.repair.as_ref().unwrap();
    assert_eq!(
        rep.chunks.quarantined + rep.chunks.dropped + rep.chunks.repointed,
        bad.len() as u64
    );
    for (name, v) in files {
        if affected.contains(name.as_str()) {
            put(&store, name, v);
        }
    }
    let r = fsck(&store, &FsckOptions::default(), &|_| {}).unwrap();
    assert!(r.clean, "not healed: {r:?}");
    for (name, v) in files {
        assert_eq!(&get(&store, name).unwrap(), v);
    }
}

fn packs(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().len())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn flipped_bytes_in_packs_are_all_found() {
    let mut damaged = 0;
    for trial in 0..trials() {
        let s = Scratch::new();
        let files = populate(&s.store(), 5, trial + 1);
        let (locs, users) = layout(&LocalStore::open_existing(&s.store()).unwrap());
        let mut rng = StdRng::seed_from_u64(trial);
        let packs = packs(&s.store());
        let mut hit = HashSet::new();
        let mut flipped = HashSet::new();
        for _ in 0..rng.random_range(1..=6) {
            let (path, len) = &packs[rng.random_range(0..packs.len())];
            let at = rng.random_range(0..*len);
            if !flipped.insert((path.clone(), at)) {
                continue;
            }
            let mut bytes = std::fs::read(path).unwrap();
            bytes[at as usize] ^= rng.random_range(1..=255u8);
            std::fs::write(path, bytes).unwrap();
            for (id, (p, loc)) in &locs {
                let end = loc.offset + ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len);
                if p == path && (loc.offset..end).contains(&at) {
                    hit.insert(*id);
                }
            }
        }
        damaged += hit.len();
        assert_found_and_healed(&s.store(), &files, &hit, &users);
    }
    assert!(
        damaged > trials() as usize / 2,
        "the flips hit too few chunks to test anything"
    );
}

#[test]
fn cut_off_packs_are_found() {
    let mut damaged = 0;
    for trial in 0..trials() {
        let s = Scratch::new();
        let files = populate(&s.store(), 4, 100 + trial);
        let (locs, users) = layout(&LocalStore::open_existing(&s.store()).unwrap());
        let mut rng = StdRng::seed_from_u64(1000 + trial);
        let packs = packs(&s.store());
        let (path, len) = &packs[rng.random_range(0..packs.len())];
        let cut = rng.random_range(0..*len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let hit: HashSet<Hash> = locs
            .iter()
            .filter(|(_, (p, loc))| {
                p == path && loc.offset + ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len) > cut
            })
            .map(|(id, _)| *id)
            .collect();
        damaged += hit.len();
        assert_found_and_healed(&s.store(), &files, &hit, &users);
    }
    assert!(damaged > 0, "the cuts hit no chunk");
}

/// The index files: sled's, the chunk table and the journal's siblings. Whatever is damaged
/// (cut off, bytes flipped, deleted), every command either works or fails naming the repair,
/// and `fsck --repair --rebuild-index` brings every file back byte for byte.
#[test]
fn damaged_index_files_are_rebuilt_from_the_journal_and_the_packs() {
    for trial in 0..trials() {
        let s = Scratch::new();
        let files = populate(&s.store(), 3, 200 + trial);
        let mut rng = StdRng::seed_from_u64(2000 + trial);
        let mut targets = vec![s.store().join("chunks.redb")];
        for e in walk(&s.store().join("index")) {
            targets.push(e);
        }
        let target = &targets[rng.random_range(0..targets.len())];
        let len = std::fs::metadata(target).unwrap().len();
        match trial % 3 {
            0 => {
                let cut = rng.random_range(0..=len);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(target)
                    .unwrap()
                    .set_len(cut)
                    .unwrap();
            }
            1 if len > 0 => {
                let mut bytes = std::fs::read(target).unwrap();
                for _ in 0..8 {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= rng.random_range(1..=255u8);
                }
                std::fs::write(target, bytes).unwrap();
            }
            _ => std::fs::remove_file(target).unwrap(),
        }
        // Whatever a plain export does now, it never writes wrong bytes.
        for (name, v) in &files {
            eprintln!("trial {trial}: damaged {target:?}");
            let out = s.path("out");
            let _ = std::fs::remove_file(&out);
            let done = hoard(&s.store())
                .args(["export", name])
                .arg(&out)
                .output()
                .unwrap();
            if done.status.success() {
                assert_eq!(
                    &std::fs::read(&out).unwrap(),
                    v,
                    "{name} wrong after damage to {target:?}"
                );
            } else {
                assert!(!out.exists());
            }
        }
        ok(hoard(&s.store()).args(["fsck", "--repair", "--rebuild-index"]));
        let r: serde_json::Value =
            serde_json::from_str(&ok(hoard(&s.store()).args(["fsck", "--json"]))).unwrap();
        assert_eq!(r["clean"], true, "{r}");
        let store = LocalStore::open_existing(&s.store()).unwrap();
        for (name, v) in &files {
            assert_eq!(
                &get(&store, name).unwrap(),
                v,
                "{name} after rebuild (damaged {target:?})"
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Over HTTP a corrupt chunk is never served: a one-piece file and the chunk itself get a 500
/// with a generic body, and the server log names the chunk.
#[test]
fn corrupt_chunks_get_500_over_http_and_the_log_names_them() {
    let s = Scratch::new();
    let files = populate(&s.store(), 2, 300);
    let (locs, users) = layout(&LocalStore::open_existing(&s.store()).unwrap());
    let (bad, (path, loc)) = locs
        .iter()
        .find(|(id, _)| users[*id] == ["f0"])
        .map(|(id, l)| (*id, l.to_owned()))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(loc.offset as usize) + ENTRY_HEADER_LEN + 10] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let log = s.path("server.log");
    let server = super::net::ChildServer::start_logging(&s.store(), &log);
    let get = |path: &str| {
        super::net::rt().block_on(async {
            let r = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
            let status = r.status().as_u16();
            (status, r.bytes().await.map(|b| b.to_vec()))
        })
    };
    let (status, body) = get("/v1/files/f0");
    assert_eq!(status, 500);
    let body: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(body["error"], "internal");
    assert!(
        !body.to_string().contains(&bad.to_hex()),
        "the detail leaked: {body}"
    );
    let (status, _) = get(&format!("/v1/chunks/{bad}"));
    assert_eq!(status, 500);
    let (status, body) = get("/v1/files/f1");
    assert_eq!((status, body.unwrap()), (200, files[1].1.clone()));
    server.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&bad.to_hex()),
        "the log does not name {bad}: {log}"
    );
}

/// A repair that stopped half way (its chunk table started afresh, not yet re-indexed) keeps
/// every other command out, gc above all (it would take every pack for garbage), until a
/// repair finishes.
#[test]
fn an_unfinished_reindex_keeps_gc_out_until_repair_finishes() {
    let s = Scratch::new();
    let files = populate(&s.store(), 2, 400);
    std::fs::remove_file(s.store().join("chunks.redb")).unwrap();
    // What an interrupted `fsck --repair` leaves: a fresh, empty table and the marker.
    let (store, notes, _) = LocalStore::open_for_repair(&s.store(), false).unwrap();
    assert!(!notes.is_empty());
    drop(store);
    let err = super::support::fails(hoard(&s.store()).arg("gc"), 1);
    assert!(err.contains("fsck --repair"), "{err}");
    let packs_before = packs(&s.store());
    ok(hoard(&s.store()).args(["fsck", "--repair"]));
    assert_eq!(packs(&s.store()), packs_before);
    ok(hoard(&s.store()).arg("gc"));
    let store = LocalStore::open_existing(&s.store()).unwrap();
    for (name, v) in &files {
        assert_eq!(&get(&store, name).unwrap(), v);
    }
}

/// A damaged journal is found by fsck (every file still exports), and a repair keeps it aside
/// and writes it anew from the index, so a later rebuild gets everything back.
#[test]
fn a_damaged_journal_is_found_and_written_anew() {
    for trial in 0..trials() {
        let s = Scratch::new();
        let files = populate(&s.store(), 3, 500 + trial);
        let journal = s.store().join("journal.log");
        let mut bytes = std::fs::read(&journal).unwrap();
        let mut rng = StdRng::seed_from_u64(5000 + trial);
        let at = rng.random_range(8..bytes.len());
        bytes[at] ^= rng.random_range(1..=255u8);
        std::fs::write(&journal, bytes).unwrap();

        let r: serde_json::Value =
            serde_json::from_str(&ok(hoard(&s.store()).args(["fsck", "--json"]))).unwrap();
        assert_eq!(r["clean"], true, "{r}");
        let j = &r["journal"];
        assert!(
            j["damaged"].as_u64().unwrap() > 0 || j["stopped"].is_string(),
            "a flipped byte at {at} went unseen: {j}"
        );
        ok(hoard(&s.store()).args(["fsck", "--repair"]));
        let r: serde_json::Value =
            serde_json::from_str(&ok(hoard(&s.store()).args(["fsck", "--json"]))).unwrap();
        assert_eq!(r["journal"]["damaged"], 0, "{r}");
        assert_eq!(r["journal"]["names_differ"], 0, "{r}");
        // The rewritten journal rebuilds everything.
        ok(hoard(&s.store()).args(["fsck", "--repair", "--rebuild-index"]));
        let store = LocalStore::open_existing(&s.store()).unwrap();
        for (name, v) in &files {
            assert_eq!(&get(&store, name).unwrap(), v);
        }
    }
}

/// An index that knows fewer files and names than the journal (here: an older copy of it put
/// back): fsck says so and is not clean, repair refuses to rewrite the journal from it, gc
/// deletes nothing, and rebuilding the index from the journal brings every file back.
#[test]
fn an_index_behind_the_journal_is_never_trusted_over_it() {
    let s = Scratch::new();
    let store = s.store();
    let a = data::random(3 << 20, 80);
    let b = data::random(3 << 20, 81);
    ok(hoard(&store).arg("import").arg(s.file("a", &a)));
    let old = s.path("index.old");
    let cp = |from: &Path, to: &Path| {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success());
    };
    cp(&store.join("index"), &old);
    ok(hoard(&store).arg("import").arg(s.file("b", &b)));
    std::fs::remove_dir_all(store.join("index")).unwrap();
    cp(&old, &store.join("index"));

    let out = hoard(&store).args(["fsck", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["clean"], false, "{r}");
    assert_eq!(r["journal"]["index_lacks_files"], 1, "{r}");
    assert_eq!(r["journal"]["index_lacks_names"], 1, "{r}");

    let journal = std::fs::read(store.join("journal.log")).unwrap();
    let err = super::support::fails(hoard(&store).args(["fsck", "--repair"]), 1);
    assert!(err.contains("--rebuild-index"), "{err}");
    assert_eq!(std::fs::read(store.join("journal.log")).unwrap(), journal);

    let packs_before = packs(&store);
    let err = super::support::fails(hoard(&store).arg("gc"), 1);
    assert!(err.contains("gc deleted nothing"), "{err}");
    assert_eq!(packs(&store), packs_before);

    ok(hoard(&store).args(["fsck", "--repair", "--rebuild-index"]));
    for (name, bytes) in [("a", &a), ("b", &b)] {
        let out = s.path(&format!("{name}.out"));
        ok(hoard(&store).args(["export", name]).arg(&out));
        assert!(std::fs::read(&out).unwrap() == *bytes, "{name}");
    }
    ok(hoard(&store).arg("gc"));
    ok(hoard(&store).arg("fsck"));
}
