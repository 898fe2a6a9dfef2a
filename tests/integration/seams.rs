//! The two storage seams' own contracts, run on every implementation: pack storage (where
//! encoded chunk bytes live) and the catalog (where the records live). A new backend (a
//! bucket, a database) passes these before it is composed into a store.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hoard::codec::Codec;
use hoard::config::StoreConfig;
use hoard::manifest::{ChunkRef, ManifestBuilder};
use hoard::store::local::LocalPacks;
use hoard::store::pack::{ChunkLoc, ENTRY_HEADER_LEN, PACK_MAGIC};
use hoard::store::packs::read_entry;
use hoard::store::pg::PgCatalog;
use hoard::store::{Catalog, LocalStore, NameVersion, PackStorage, UploadKind};
use hoard::{Error, Hash};

use crate::integration::engines;

/// Two entries of distinct chunks, as a store would append them.
fn entries() -> Vec<(Hash, Vec<u8>)> {
    (0..2u8)
        .map(|i| {
            let bytes = vec![i + 1; 1000 + usize::from(i)];
            (Hash::of(&bytes), bytes)
        })
        .collect()
}

fn pack_names(p: &dyn PackStorage) -> Vec<u64> {
    p.list().unwrap().into_iter().map(|(n, _)| n).collect()
}

/// A pack of many large entries (past a bucket sink's part size, so it goes up in parts)
/// reads back whole, and an abandoned one leaves nothing.
fn large_pack_contract(p: &dyn PackStorage) {
    let before = pack_names(p);
    let es: Vec<(Hash, Vec<u8>)> = (0..24u32)
        .map(|i| {
            let bytes = crate::integration::data::mixed(1 << 20, u64::from(i) + 900);
            (Hash::of(&bytes), bytes)
        })
        .collect();
    let mut sink = p.create().unwrap();
    let locs: Vec<ChunkLoc> = es
        .iter()
        .map(|(id, b)| sink.append(id, Codec::Raw, b.len() as u32, b).unwrap())
        .collect();
    sink.sync().unwrap();
    let name = sink.pack();
    let mut payload = Vec::new();
    for ((id, bytes), loc) in es.iter().zip(&locs) {
        read_entry(p, id, loc, &mut payload).unwrap();
        assert!(&payload == bytes, "entry at {} reads back", loc.offset);
    }
    // One range across many entries (and part boundaries) is the bytes as appended.
    let (first, last) = (&locs[3], &locs[20]);
    let mut span = vec![0; (last.offset - first.offset) as usize];
    assert!(p.read_at(name, first.offset, &mut [&mut span[..]]).unwrap());
    assert_eq!(
        &span[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + 64],
        &es[3].1[..64]
    );
    let mut whole = Vec::new();
    std::io::Read::read_to_end(&mut p.read_all(name).unwrap().unwrap(), &mut whole).unwrap();
    let end = locs[23].offset as usize + ENTRY_HEADER_LEN + es[23].1.len();
    assert_eq!(whole.len(), end);
    assert_eq!(
        &whole[first.offset as usize..last.offset as usize],
        &span[..]
    );
    assert!(pack_names(p).contains(&name));
    // Abandoned after many parts went up: no pack.
    let mut cut = p.create().unwrap();
    for (id, b) in &es[..20] {
        cut.append(id, Codec::Raw, b.len() as u32, b).unwrap();
    }
    let cut_name = cut.pack();
    cut.abandon();
    assert!(!pack_names(p).contains(&cut_name));
    p.delete(&[name]).unwrap();
    assert_eq!(pack_names(p), before);
}

fn pack_storage_contract(p: &dyn PackStorage) {
    large_pack_contract(p);
    let before = pack_names(p);
    let es = entries();

    // Two sinks at once get names never used, and their entries do not mix.
    let mut a = p.create().unwrap();
    let mut b = p.create().unwrap();
    assert_ne!(a.pack(), b.pack());
    assert!(!before.contains(&a.pack()) && !before.contains(&b.pack()));
    assert!(!a.full());
    let mut locs = Vec::new();
    for (id, bytes) in &es {
        let la = a.append(id, Codec::Raw, bytes.len() as u32, bytes).unwrap();
        let lb = b.append(id, Codec::Raw, bytes.len() as u32, bytes).unwrap();
        assert_eq!((la.pack, lb.pack), (a.pack(), b.pack()));
        assert_eq!(
            (la.stored_len, la.raw_len),
            (bytes.len() as u32, bytes.len() as u32)
        );
        locs.push((*id, la, lb));
    }
    assert!(locs[1].1.offset >= locs[0].1.offset + (ENTRY_HEADER_LEN + es[0].1.len()) as u64);
    // Durable and readable once a sync started after the appends has finished.
    a.start_sync().unwrap().wait().unwrap();
    b.sync().unwrap();
    let mut payload = Vec::new();
    for ((id, la, lb), (_, bytes)) in locs.iter().zip(&es) {
        for loc in [la, lb] {
            assert_eq!(read_entry(p, id, loc, &mut payload).unwrap(), Codec::Raw);
            assert_eq!(&payload, bytes);
        }
        // A location that does not match the entry is refused, not served.
        let wrong = ChunkLoc {
            raw_len: la.raw_len + 1,
            ..*la
        };
        assert!(matches!(
            read_entry(p, id, &wrong, &mut payload),
            Err(Error::Corrupt { .. })
        ));
    }

    // A range past the end is told apart from an error.
    let (a_name, b_name) = (a.pack(), b.pack());
    let end = locs[1].1.offset + (ENTRY_HEADER_LEN + es[1].1.len()) as u64;
    assert!(
        !p.read_at(a_name, end - 10, &mut [&mut [0u8; 20][..]])
            .unwrap()
    );
    drop((a, b));

    // Listing: both packs, each as long as what was appended; the whole pack reads back.
    let listed = p.list().unwrap();
    let len_of = |n: u64| listed.iter().find(|(m, _)| *m == n).map(|(_, l)| *l);
    assert_eq!(len_of(a_name), Some(end));
    assert_eq!(len_of(b_name), Some(end));
    assert_eq!(
        p.total_bytes().unwrap(),
        listed.iter().map(|(_, l)| l).sum::<u64>()
    );
    let mut whole = Vec::new();
    std::io::Read::read_to_end(&mut p.read_all(a_name).unwrap().unwrap(), &mut whole).unwrap();
    assert_eq!(whole.len() as u64, end);
    assert_eq!(whole[..PACK_MAGIC.len()], PACK_MAGIC);
    let mut range = vec![0u8; whole.len()];
    assert!(p.read_at(a_name, 0, &mut [&mut range[..]]).unwrap());
    assert_eq!(range, whole);

    // A sink given up before any sync leaves no pack; nor does one that received nothing.
    let mut c = p.create().unwrap();
    let c_name = c.pack();
    c.append(&es[0].0, Codec::Raw, 1000, &es[0].1).unwrap();
    c.abandon();
    let d = p.create().unwrap();
    let d_name = d.pack();
    drop(d);
    let now = pack_names(p);
    assert!(!now.contains(&c_name) && !now.contains(&d_name), "{now:?}");

    // A damaged entry can be kept aside; one in a pack that is gone cannot.
    let kept = p.quarantine(&locs[0].0, &locs[0].1).unwrap();
    assert!(kept.is_some());

    // Deleting: gone from the list and from reads; deleting again is no error.
    p.delete(&[a_name]).unwrap();
    assert!(!pack_names(p).contains(&a_name));
    assert!(p.read_all(a_name).unwrap().is_none());
    assert!(read_entry(p, &locs[0].0, &locs[0].1, &mut payload).is_err());
    assert_eq!(p.quarantine(&locs[0].0, &locs[0].1).unwrap(), None);
    p.delete(&[a_name]).unwrap();
    p.delete(&[]).unwrap();
    // The other pack is untouched, and a name is never handed out again.
    assert_eq!(
        read_entry(p, &locs[0].0, &locs[0].2, &mut payload).unwrap(),
        Codec::Raw
    );
    let e = p.create().unwrap();
    let used: HashSet<u64> = [a_name, b_name, c_name, d_name].into();
    assert!(!used.contains(&e.pack()));
    drop(e);
    p.delete(&[b_name]).unwrap();
    assert_eq!(pack_names(p), before);
}

fn loc(pack: u64, offset: u64) -> ChunkLoc {
    ChunkLoc {
        pack,
        offset,
        stored_len: 10,
        raw_len: 20,
        codec: Codec::Zstd as u8,
        base: None,
    }
}

fn catalog_contract(c: &(dyn Catalog + 'static)) {
    // Chunk locations, batched: missing and locate answer in input order.
    let ids: Vec<Hash> = (0..5u8).map(|i| Hash::of(&[i])).collect();
    assert_eq!(c.missing(&ids).unwrap(), vec![true; 5]);
    c.insert_locs(&[(ids[0], loc(1, 8)), (ids[2], loc(1, 100))])
        .unwrap();
    assert_eq!(
        c.missing(&[ids[2], ids[1], ids[0]]).unwrap(),
        vec![false, true, false]
    );
    assert_eq!(
        c.locate(&[ids[2], ids[1], ids[0]]).unwrap(),
        vec![Some(loc(1, 100)), None, Some(loc(1, 8))]
    );
    assert_eq!(c.loc(&ids[0]).unwrap(), Some(loc(1, 8)));
    // relocate is compare-and-set: a move from a location no longer held does nothing.
    let moved = c
        .relocate(&[
            (ids[0], loc(1, 8), loc(2, 8)),
            (ids[2], loc(9, 9), loc(2, 60)),
        ])
        .unwrap();
    assert_eq!(moved, 1);
    assert_eq!(c.loc(&ids[0]).unwrap(), Some(loc(2, 8)));
    assert_eq!(c.loc(&ids[2]).unwrap(), Some(loc(1, 100)));
    // Every location, in id order.
    let mut seen = Vec::new();
    c.for_each_loc(&mut |id, l| {
        seen.push((*id, l.unwrap()));
        Ok(())
    })
    .unwrap();
    let mut expect = vec![(ids[0], loc(2, 8)), (ids[2], loc(1, 100))];
    expect.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(seen, expect);
    // Removing counts what was there and its stored bytes.
    assert_eq!(c.remove_locs(&[ids[0], ids[1]]).unwrap(), (1, 10));
    assert_eq!(c.missing(&ids[..3]).unwrap(), vec![true, true, false]);
    // Deltas: a base is known to be one while a delta names it; a chunk recorded plain is
    // never replaced by a delta (another writer's deltas may name it), the reverse is fine.
    let delta = |pack: u64, base: Hash| ChunkLoc {
        codec: Codec::Delta as u8,
        base: Some(base),
        ..loc(pack, 0)
    };
    c.insert_locs(&[(ids[3], delta(5, ids[2]))]).unwrap();
    assert_eq!(
        c.bases_in_use(&ids[..4]).unwrap(),
        vec![false, false, true, false]
    );
    c.insert_locs(&[(ids[2], delta(6, ids[4]))]).unwrap();
    assert_eq!(
        c.loc(&ids[2]).unwrap(),
        Some(loc(1, 100)),
        "a plain chunk became a delta"
    );
    c.insert_locs(&[(ids[3], loc(7, 0))]).unwrap();
    assert_eq!(c.loc(&ids[3]).unwrap(), Some(loc(7, 0)));
    assert_eq!(c.bases_in_use(&ids[..4]).unwrap(), vec![false; 4]);
    c.remove_locs(&[ids[3]]).unwrap();

    // Pages and manifests.
    let chunk = b"the only chunk".to_vec();
    let r = ChunkRef {
        id: Hash::of(&chunk),
        len: chunk.len() as u32,
    };
    let mut builder = ManifestBuilder::default();
    assert!(builder.push(r).is_none());
    let (m, page) = builder.finish(Hash::of(&chunk), c.config().chunker);
    let page = page.expect("one page");
    c.put_page(&page.pref.hash, &page.bytes).unwrap();
    assert_eq!(
        c.get_page(&page.pref.hash).unwrap(),
        Some(page.bytes.clone())
    );
    assert_eq!(c.get_page(&ids[4]).unwrap(), None);
    assert_eq!(c.page_hashes().unwrap(), vec![page.pref.hash]);
    c.put_manifest(&m).unwrap();
    assert_eq!(c.get_manifest(&m.file_id).unwrap(), Some(m.clone()));
    assert_eq!(
        c.file_ids_with_prefix(&m.file_id.as_bytes()[..2]).unwrap(),
        vec![m.file_id]
    );
    assert_eq!(c.manifests().unwrap(), vec![m.clone()]);

    // Names: two writers on one name never lose a version.
    let threads = 4;
    let each = 25;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..each {
                    let v = NameVersion {
                        file_id: m.file_id,
                        size: t * 1000 + i,
                        added: 1,
                    };
                    c.push_name("shared", v).unwrap();
                }
            });
        }
    });
    let rec = c.get_name("shared").unwrap().unwrap();
    assert_eq!(rec.versions.len() as u64, threads * each);
    let sizes: HashSet<u64> = rec.versions.iter().map(|v| v.size).collect();
    assert_eq!(sizes.len() as u64, threads * each);
    let mut short = rec.clone();
    short.versions.truncate(1);
    c.put_name("other", &short).unwrap();
    let listed: Vec<String> = c.names().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, vec!["other".to_owned(), "shared".to_owned()]);
    assert_eq!(c.remove_name("other").unwrap(), Some(short));
    assert_eq!(c.remove_name("other").unwrap(), None);

    // Upload records: by kind and id, each kind apart.
    let (u1, u2) = ([1u8; 16], [2u8; 16]);
    c.put_upload(UploadKind::Session, &u1, b"session one")
        .unwrap();
    c.put_upload(UploadKind::Tus, &u1, b"tus one").unwrap();
    c.put_upload(UploadKind::Tus, &u2, b"tus two").unwrap();
    assert_eq!(
        c.get_upload(UploadKind::Session, &u1).unwrap().as_deref(),
        Some(&b"session one"[..])
    );
    assert_eq!(c.get_upload(UploadKind::Session, &u2).unwrap(), None);
    let mut tus = c.uploads(UploadKind::Tus).unwrap();
    tus.sort();
    assert_eq!(
        tus,
        vec![(u1, b"tus one".to_vec()), (u2, b"tus two".to_vec())]
    );
    c.delete_upload(UploadKind::Tus, &u1).unwrap();
    assert_eq!(c.uploads(UploadKind::Tus).unwrap().len(), 1);
    assert_eq!(c.uploads(UploadKind::Session).unwrap().len(), 1);

    // A tail continues, and is forgotten with its upload.
    c.write_tail(&u2, 0, 0, b"abc", b"m").unwrap();
    c.write_tail(&u2, 0, 3, b"def", b"n").unwrap();
    let t = c.tail(&u2).unwrap().unwrap();
    assert_eq!(
        (t.position, t.bytes.as_slice(), t.meta.as_slice()),
        (0, &b"abcdef"[..], &b"n"[..])
    );
    c.forget_tail(&u2).unwrap();
    assert_eq!(c.tail(&u2).unwrap(), None);

    // A chunk check's saved progress.
    c.save_check_progress(Some(b"{\"version\":1}")).unwrap();
    assert_eq!(c.check_progress().as_deref(), Some(&b"{\"version\":1}"[..]));
    c.save_check_progress(None).unwrap();
    assert_eq!(c.check_progress(), None);

    // Removing manifests and pages.
    assert!(c.remove_manifest(&m.file_id).unwrap());
    assert!(!c.remove_manifest(&m.file_id).unwrap());
    c.remove_pages(&[page.pref.hash]).unwrap();
    assert_eq!(c.page_hashes().unwrap(), Vec::<Hash>::new());
}

#[test]
fn local_packs_meet_the_pack_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("packs");
    std::fs::create_dir(&packs).unwrap();
    let next = Arc::new(AtomicU64::new(1));
    let ids = move || Ok(next.fetch_add(1, Ordering::SeqCst));
    let p = LocalPacks::new(packs, dir.path().join("quarantine"), Box::new(ids));
    pack_storage_contract(&p);
    // The copy kept aside is where the storage said.
    assert_eq!(
        std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn local_catalog_meets_the_catalog_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let (store, _) = LocalStore::open(&root, None).unwrap();
    assert_eq!(store.catalog().config(), StoreConfig::default());
    catalog_contract(store.catalog());
    // Durable on return: what was left survives a reopen.
    drop(store);
    let (store, _) = LocalStore::open(&root, None).unwrap();
    let c = store.catalog();
    assert_eq!(c.get_name("shared").unwrap().unwrap().versions.len(), 100);
    assert_eq!(c.uploads(UploadKind::Session).unwrap().len(), 1);
    assert_eq!(c.missing(&[Hash::of(&[2u8])]).unwrap(), vec![false]);
    // The journal agrees with what the catalog holds.
    assert!(c.check_log(false).unwrap().unwrap().agrees());
}

#[test]
fn bucket_packs_meet_the_pack_storage_contract() {
    let Some(bucket) = engines::bucket("bucket_packs") else {
        return;
    };
    let p = hoard::store::bucket::BucketPacks::open(&bucket).unwrap();
    pack_storage_contract(&p);
}

#[test]
fn pg_catalog_meets_the_catalog_contract() {
    let Some(index) = engines::index("pg_catalog") else {
        return;
    };
    let bucket = "s3://contract/test";
    let (c, created) = PgCatalog::open(&index, bucket, true, None).unwrap();
    assert!(created);
    assert_eq!(c.config(), StoreConfig::default());
    catalog_contract(&c);
    // A tail's bytes before keep_from go; a write that does not continue the run starts a
    // new one.
    let u = [7u8; 16];
    c.write_tail(&u, 0, 10, b"0123456789", b"a").unwrap();
    c.write_tail(&u, 14, 20, b"ab", b"b").unwrap();
    let t = c.tail(&u).unwrap().unwrap();
    assert_eq!((t.position, t.bytes.as_slice()), (14, &b"456789ab"[..]));
    c.write_tail(&u, 30, 40, b"xy", b"c").unwrap();
    let t = c.tail(&u).unwrap().unwrap();
    assert_eq!(
        (t.position, t.bytes.as_slice(), t.meta.as_slice()),
        (40, &b"xy"[..], &b"c"[..])
    );
    c.write_tail(&u, 99, 42, b"z", b"d").unwrap();
    assert_eq!(
        c.tail(&u).unwrap().unwrap().position,
        43,
        "never past the run's end"
    );
    // Durable on return: a new process (a new pool) sees what was left.
    drop(c);
    let (c, created) = PgCatalog::open(&index, bucket, false, None).unwrap();
    assert!(!created);
    assert_eq!(c.get_name("shared").unwrap().unwrap().versions.len(), 100);
    assert_eq!(c.uploads(UploadKind::Session).unwrap().len(), 1);
    assert_eq!(c.missing(&[Hash::of(&[2u8])]).unwrap(), vec![false]);
    // Any number of processes at once: a second catalog on the same database sees it all.
    let (c2, _) = PgCatalog::open(&index, bucket, false, None).unwrap();
    assert_eq!(c2.missing(&[Hash::of(&[2u8])]).unwrap(), vec![false]);
    drop(c2);
    drop(c);
    // Another bucket's store, or other params, are refused.
    let other = PgCatalog::open(&index, "s3://elsewhere", true, None)
        .err()
        .unwrap();
    assert!(
        other
            .to_string()
            .contains("belongs to the store at s3://contract/test"),
        "{other}"
    );
    let params =
        StoreConfig::new(hoard::ChunkerParams::new(1024, 4096, 16384).unwrap(), 3).unwrap();
    let e = PgCatalog::open(&index, bucket, true, Some(params))
        .err()
        .unwrap();
    assert!(matches!(e, Error::ParamsMismatch { .. }), "{e}");
}

#[test]
fn pg_catalog_refuses_a_newer_schema_and_creates_nothing_unasked() {
    let Some(index) = engines::index("pg_schema") else {
        return;
    };
    // A read of a database with no store names what to do and leaves it empty.
    let e = PgCatalog::open(&index, "s3://b", false, None)
        .err()
        .unwrap();
    assert!(matches!(e, Error::NoStore(_)), "{e}");
    assert!(e.to_string().contains("hoard init"), "{e}");
    let (c, _) = PgCatalog::open(&index, "s3://b", true, None).unwrap();
    drop(c);
    engines::sql(&index, "UPDATE hoard_schema SET version = version + 1");
    let e = PgCatalog::open(&index, "s3://b", false, None)
        .err()
        .unwrap();
    assert!(matches!(e, Error::Version { .. }), "{e}");
    assert!(e.to_string().contains("upgrade hoard"), "{e}");
}

#[test]
fn pg_catalog_names_an_unreachable_index_without_its_password() {
    // A port nothing listens on (bound, then closed), on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://hoard:s3cret-pw@127.0.0.1:{port}/db?connect_timeout=2");
    let e = PgCatalog::open(&url, "s3://b", true, None).err().unwrap();
    let text = format!("{e}");
    assert!(
        matches!(
            e,
            Error::Engine {
                unreachable: true,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("postgres://hoard@127.0.0.1:{port}/db")),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}
