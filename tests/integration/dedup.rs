//! Dedup: an edited copy of a stored file costs only the chunks around the edits.

use hoard::config::StoreConfig;
use hoard::store::LocalStore;
use hoard::{ChunkerParams, ingest, names, restore};

use super::data;
use super::support::b3;

#[test]
fn edited_copy_adds_at_most_three_percent() {
    let dir = tempfile::tempdir().unwrap();
    // Smaller chunks than the default so that ~100 edits in a 128 MiB file are a fair test:
    // each edit costs about one or two chunks, whatever the chunk size.
    let params = ChunkerParams::new(4096, 16384, 65536).unwrap();
    let config = StoreConfig::new(params, 1).unwrap();
    let (store, _) = LocalStore::open(&dir.path().join("s"), Some(config)).unwrap();

    let base = data::mixed(128 << 20, 42);
    let edited = data::edit(&base, 100, 43);
    assert_ne!(base, edited);

    let (m1, r1) = ingest::ingest(&store, &base[..], &|_| {}).unwrap();
    names::record(&store, "data.bin", &m1).unwrap();
    assert_eq!(
        r1.new_bytes,
        base.len() as u64,
        "a fresh store has nothing of it"
    );
    let (m2, r2) = ingest::ingest(&store, &edited[..], &|_| {}).unwrap();
    names::record(&store, "data.bin", &m2).unwrap();
    let share = r2.new_bytes as f64 / edited.len() as f64;
    assert!(
        share <= 0.03,
        "edited copy added {:.2}% new bytes",
        share * 100.0
    );
    assert!(r2.new_bytes > 0);

    // Both versions come back byte-identical, under their ids, by name and version.
    for (spec, data) in [
        ("data.bin@1", &base),
        ("data.bin@2", &edited),
        ("data.bin", &edited),
    ] {
        let found = names::resolve(&store, spec).unwrap();
        assert_eq!(found.manifest.file_id.to_hex(), b3(data), "{spec}");
        let mut out = Vec::with_capacity(data.len());
        restore::restore(&store, &found.manifest, &mut out, &|_| {}).unwrap();
        assert!(out == *data, "{spec} differs");
    }
}
