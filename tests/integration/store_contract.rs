//! One contract, run on every store: the in-memory reference, the local directory store, and
//! the remote store (a bucket and PostgreSQL, on the engines `.ci/remote.sh` starts).

use hoard::codec::Codec;
use hoard::config::StoreConfig;
use hoard::manifest::{ChunkRef, ManifestBuilder};
use hoard::store::{ChunkStore, LocalStore, MemoryStore, NameVersion, RemoteStore};
use hoard::{Error, Hash, names, restore};

use crate::integration::engines;

fn contract(s: &dyn ChunkStore) {
    let a = b"chunk a".repeat(100);
    let b = b"chunk b".to_vec();
    let (ia, ib) = (Hash::of(&a), Hash::of(&b));

    // Nothing yet; missing answers many ids at once, in input order.
    assert_eq!(s.missing(&[ia, ib, ia]).unwrap(), vec![true, true, true]);
    assert!(matches!(s.read_chunk(&ia), Err(Error::ChunkNotFound(id)) if id == ia));

    // Appended chunks are invisible until commit, then durable and readable.
    let mut w = s.writer().unwrap();
    let z = hoard::codec::compress(&a, 3).expect("repetitive text compresses");
    w.append(&ia, Codec::Zstd, a.len() as u32, &z).unwrap();
    w.append(&ib, Codec::Raw, b.len() as u32, &b).unwrap();
    assert_eq!(s.missing(&[ia, ib]).unwrap(), vec![true, true]);
    w.commit().unwrap();
    drop(w);
    assert_eq!(s.missing(&[ia, ib]).unwrap(), vec![false, false]);
    let ra = ChunkRef {
        id: ia,
        len: a.len() as u32,
    };
    assert_eq!(restore::read_verified(s, &ra).unwrap(), a);
    assert_eq!(s.read_chunk(&ib).unwrap().payload, b);

    // Putting the same chunk again is harmless.
    let mut w = s.writer().unwrap();
    w.append(&ib, Codec::Raw, b.len() as u32, &b).unwrap();
    w.commit().unwrap();
    drop(w);
    assert_eq!(
        restore::read_verified(
            s,
            &ChunkRef {
                id: ib,
                len: b.len() as u32
            }
        )
        .unwrap(),
        b
    );
    // Many at once, in the order asked (an id twice, packs of two commits): as one by one.
    let ids = [ib, ia, ib];
    let many = s.read_chunks(&ids).unwrap();
    let one: Vec<_> = ids.iter().map(|id| s.read_chunk(id).unwrap()).collect();
    assert_eq!(many, one);
    let unknown = Hash::of(b"never stored");
    assert!(
        matches!(s.read_chunks(&[ia, unknown]), Err(Error::ChunkNotFound(id)) if id == unknown)
    );
    let totals = s.chunk_totals().unwrap();
    assert_eq!(
        (totals.chunks, totals.raw_bytes),
        (2, (a.len() + b.len()) as u64)
    );
    assert!(s.chunk_data_bytes().unwrap() >= totals.encoded_bytes);

    // Manifests and pages.
    let mut builder = ManifestBuilder::default();
    assert!(builder.push(ra).is_none());
    let file: Vec<u8> = a.clone();
    let (m, page) = builder.finish(Hash::of(&file), s.config().chunker);
    let page = page.expect("one page");
    s.put_page(&page.pref.hash, &page.bytes).unwrap();
    assert_eq!(
        s.get_page(&page.pref.hash).unwrap(),
        Some(page.bytes.clone())
    );
    assert_eq!(s.get_page(&ib).unwrap(), None);
    assert_eq!(s.get_manifest(&m.file_id).unwrap(), None);
    s.put_manifest(&m).unwrap();
    assert_eq!(s.get_manifest(&m.file_id).unwrap(), Some(m.clone()));
    assert_eq!(
        s.file_ids_with_prefix(&m.file_id.as_bytes()[..3]).unwrap(),
        vec![m.file_id]
    );
    assert_eq!(s.manifests().unwrap(), vec![m.clone()]);
    let mut out = Vec::new();
    restore::restore(s, &m, &mut out, &|_| {}).unwrap();
    assert_eq!(out, file);

    // Names keep their history, oldest first.
    assert_eq!(s.get_name("n").unwrap(), None);
    let v = |id: Hash| NameVersion {
        file_id: id,
        size: 1,
        added: 7,
    };
    s.push_name("n", v(ia)).unwrap();
    let rec = s.push_name("n", v(ib)).unwrap();
    assert_eq!(
        rec.versions.iter().map(|x| x.file_id).collect::<Vec<_>>(),
        vec![ia, ib]
    );
    assert_eq!(s.get_name("n").unwrap(), Some(rec.clone()));
    assert_eq!(s.names().unwrap(), vec![("n".to_owned(), rec)]);

    // Resolution: name, NAME@N, id, prefix; unknown and too-short specs are refused.
    names::record(s, "file", &m).unwrap();
    assert_eq!(names::resolve(s, "file").unwrap().manifest, m);
    assert_eq!(names::resolve(s, "file@1").unwrap().manifest, m);
    assert!(matches!(
        names::resolve(s, "file@2"),
        Err(Error::NoSuchVersion { n: 2, count: 1, .. })
    ));
    assert_eq!(names::resolve(s, &m.file_id.to_hex()).unwrap().manifest, m);
    assert_eq!(
        names::resolve(s, &m.file_id.to_hex()[..9])
            .unwrap()
            .manifest,
        m
    );
    assert!(matches!(
        names::resolve(s, &m.file_id.to_hex()[..7]),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(names::resolve(s, "nope"), Err(Error::NotFound(_))));
    tails(s);
}

/// tus tails: continued, restarted past a gap, trimmed to what is still needed, forgotten.
fn tails(s: &dyn ChunkStore) {
    let id = [7u8; 16];
    let other = [8u8; 16];
    assert_eq!(s.tail(&id).unwrap(), None);
    let held = |s: &dyn ChunkStore| {
        let t = s.tail(&id).unwrap().unwrap();
        (t.position, t.bytes, t.meta)
    };
    s.write_tail(&id, 100, 100, b"abc", b"m1").unwrap();
    s.write_tail(&other, 0, 0, b"other", b"").unwrap();
    s.write_tail(&id, 100, 103, b"def", b"m2").unwrap();
    let (pos, bytes, meta) = held(s);
    assert_eq!(
        (pos, bytes.as_slice(), meta.as_slice()),
        (100, &b"abcdef"[..], &b"m2"[..])
    );
    // Bytes before `keep_from` may go; those after it stay, whatever was dropped.
    s.write_tail(&id, 104, 106, b"g", b"m3").unwrap();
    let (pos, bytes, _) = held(s);
    assert!(pos <= 104 && bytes.ends_with(b"efg"), "{pos} {bytes:?}");
    assert_eq!(pos + bytes.len() as u64, 107);
    // A write that does not continue the tail starts a new one.
    s.write_tail(&id, 200, 200, b"xyz", b"m4").unwrap();
    assert_eq!(held(s), (200, b"xyz".to_vec(), b"m4".to_vec()));
    // Many more bytes than a rewrite threshold, a few at a time, cut as they go: what is
    // read back is always exactly the needed bytes' continuation.
    let mut expect: Vec<u8> = b"xyz".to_vec();
    let mut start = 200u64;
    for i in 0..3000u64 {
        let piece = vec![(i % 251) as u8; 997];
        let at = start + expect.len() as u64;
        expect.extend_from_slice(&piece);
        if i % 7 == 0 {
            // A cut point: all but the last 1 500 bytes are no longer needed.
            let cut = expect.len().saturating_sub(1500);
            expect.drain(..cut);
            start += cut as u64;
        }
        s.write_tail(&id, start, at, &piece, b"m").unwrap();
        let (pos, bytes, _) = held(s);
        assert!(pos <= start, "tail begins at {pos}, after {start}");
        assert_eq!(
            &bytes[(start - pos) as usize..],
            expect.as_slice(),
            "write {i}"
        );
    }
    s.forget_tail(&id).unwrap();
    assert_eq!(s.tail(&id).unwrap(), None);
    assert_eq!(s.tail(&other).unwrap().unwrap().bytes, b"other");
    s.forget_tail(&other).unwrap();
}

#[test]
fn memory_store_meets_the_contract() {
    contract(&MemoryStore::new(StoreConfig::default()));
}

#[test]
fn local_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (store, created) = LocalStore::open(&dir.path().join("s"), None).unwrap();
    assert!(created);
    contract(&store);
    drop(store);
    // Everything survives a reopen, and the params are remembered.
    let (store, created) = LocalStore::open(&dir.path().join("s"), None).unwrap();
    assert!(!created);
    assert_eq!(store.config(), StoreConfig::default());
    assert_eq!(store.chunk_totals().unwrap().chunks, 2);
    assert!(names::resolve(&store, "file").is_ok());
    // The tails' files went with their uploads; a file no record names goes at open.
    let tails = dir.path().join("s/tails");
    assert_eq!(std::fs::read_dir(&tails).unwrap().count(), 0);
    std::fs::write(tails.join(format!("{}.3", "07".repeat(16))), b"stray").unwrap();
    drop(store);
    let _store = LocalStore::open(&dir.path().join("s"), None).unwrap();
    assert_eq!(std::fs::read_dir(&tails).unwrap().count(), 0);
}

#[test]
fn remote_store_meets_the_contract() {
    let (Some(bucket), Some(index)) = (
        engines::bucket("remote_contract"),
        engines::index("remote_contract"),
    ) else {
        return;
    };
    // Reading a store that does not exist is refused and creates nothing.
    let e = RemoteStore::open(&bucket, &index, false, None)
        .err()
        .unwrap();
    assert!(matches!(e, Error::NoStore(_)), "{e}");
    let (store, created) = RemoteStore::open(&bucket, &index, true, None).unwrap();
    assert!(created);
    contract(&store);
    drop(store);
    // Everything survives a reopen (another process would see the same), params remembered.
    let (store, created) = RemoteStore::open(&bucket, &index, false, None).unwrap();
    assert!(!created);
    assert_eq!(store.config(), StoreConfig::default());
    assert_eq!(store.chunk_totals().unwrap().chunks, 2);
    assert!(names::resolve(&store, "file").is_ok());
    drop(store);
    // The bucket's store is never given a fresh, empty index (gc would take its packs for
    // garbage); nor is an index used with another store's bucket.
    let empty = engines::index("remote_contract_empty").unwrap();
    let e = RemoteStore::open(&bucket, &empty, true, None)
        .err()
        .unwrap();
    assert!(matches!(e, Error::IndexDamaged { .. }), "{e}");
    let other = engines::bucket("remote_contract_other").unwrap();
    let e = RemoteStore::open(&other, &index, true, None).err().unwrap();
    assert!(e.to_string().contains("belongs to the store at"), "{e}");
}

#[test]
fn reopening_with_other_params_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    drop(LocalStore::open(&root, None).unwrap());
    let other = StoreConfig::new(hoard::ChunkerParams::new(1024, 4096, 16384).unwrap(), 1).unwrap();
    assert!(matches!(
        LocalStore::open(&root, Some(other)),
        Err(Error::ParamsMismatch { .. })
    ));
}

#[test]
fn ambiguous_id_prefixes_are_refused() {
    let s = MemoryStore::new(StoreConfig::default());
    // Two manifests whose ids share their first 8 hex digits.
    let mut x = [0u8; 32];
    x[..4].copy_from_slice(&[0xab, 0xcd, 0xef, 0x01]);
    let mut y = x;
    y[31] = 1;
    for id in [x, y] {
        let (mut m, _) =
            ManifestBuilder::default().finish(Hash::from_bytes(id), s.config().chunker);
        m.file_id = Hash::from_bytes(id);
        s.put_manifest(&m).unwrap();
    }
    assert!(matches!(
        names::resolve(&s, "abcdef01"),
        Err(Error::Ambiguous { count: 2, .. })
    ));
    assert!(names::resolve(&s, &Hash::from_bytes(y).to_hex()).is_ok());
}

#[test]
fn tampered_chunk_is_reported_not_served() {
    let s = MemoryStore::new(StoreConfig::default());
    let data = super::data::mixed(600_000, 3);
    let (m, _) = hoard::ingest::ingest(&s, &data[..], &|_| {}).unwrap();
    let first = {
        let mut first = None;
        restore::for_each_page(&s, &m, |p| {
            first.get_or_insert(p.chunks[1]);
            Ok(())
        })
        .unwrap();
        first.unwrap()
    };
    let mut payload = s.read_chunk(&first.id).unwrap().payload.to_vec();
    let mid = payload.len() / 2;
    payload[mid] ^= 0x40;
    s.tamper(&first.id, payload);
    let mut out = Vec::new();
    let err = restore::restore(&s, &m, &mut out, &|_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { id, .. } if *id == first.id),
        "{err}"
    );
    assert!(err.to_string().contains(&first.id.to_hex()));
}
