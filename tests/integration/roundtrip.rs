//! Round trips on the table of interesting sizes: library on both stores, and the CLI through
//! files, stdin and stdout.

use hoard::config::StoreConfig;
use hoard::store::{ChunkStore, LocalStore, MemoryStore};
use hoard::{ingest, restore};

use super::data;
use super::support::{Scratch, b3, hoard, interesting_sizes, ok, run_with_input};

fn roundtrip_lib(store: &dyn ChunkStore) {
    for (i, size) in interesting_sizes().into_iter().enumerate() {
        let data = data::mixed(size, i as u64);
        let (m, report) = ingest::ingest(store, &data[..], &|_| {}).unwrap();
        assert_eq!(report.size, size as u64);
        assert_eq!(m.file_len, size as u64);
        assert_eq!(m.file_id.to_hex(), b3(&data), "size {size}");
        let mut out = Vec::with_capacity(size);
        restore::restore(store, &m, &mut out, &|_| {}).unwrap();
        assert!(out == data, "size {size}: export differs");
        // The same bytes again add nothing.
        let (_, again) = ingest::ingest(store, &data[..], &|_| {}).unwrap();
        assert_eq!((again.new_chunks, again.new_bytes), (0, 0), "size {size}");
    }
}

#[test]
fn library_roundtrip_memory_store() {
    roundtrip_lib(&MemoryStore::new(StoreConfig::default()));
}

#[test]
fn library_roundtrip_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = LocalStore::open(&dir.path().join("s"), None).unwrap();
    roundtrip_lib(&store);
}

#[test]
fn random_bytes_roundtrip() {
    let s = MemoryStore::new(StoreConfig::default());
    for (size, seed) in [(1_234_567, 1), (262_145, 2), (65_535, 3)] {
        let data = data::random(size, seed);
        let (m, _) = ingest::ingest(&s, &data[..], &|_| {}).unwrap();
        let mut out = Vec::new();
        restore::restore(&s, &m, &mut out, &|_| {}).unwrap();
        assert!(out == data);
    }
}

#[test]
fn cli_roundtrip_file_stdin_stdout() {
    let t = Scratch::new();
    let store = t.store();
    for (i, size) in interesting_sizes().into_iter().enumerate() {
        let data = data::mixed(size, 100 + i as u64);
        let id = b3(&data);

        // file in, file out
        let input = t.file(&format!("in-{size}.bin"), &data);
        let printed = ok(hoard(&store).arg("import").arg(&input));
        assert!(
            printed.starts_with(&format!("{id}  in-{size}.bin\n")),
            "{printed}"
        );
        let out = t.path(&format!("out-{size}.bin"));
        ok(hoard(&store)
            .arg("export")
            .arg(format!("in-{size}.bin"))
            .arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == data,
            "size {size} via files"
        );

        // stdin in (named), stdout out (by id)
        let mut cmd = hoard(&store);
        cmd.args(["import", "-", "--name", &format!("piped/{size}"), "--json"]);
        let res = run_with_input(cmd, &data);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        assert_eq!(v["id"], id);
        assert_eq!(v["size"], size);
        assert_eq!(
            v["new_bytes"], 0,
            "second import of the same bytes adds nothing"
        );
        let res = hoard(&store).args(["export", &id, "-"]).output().unwrap();
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert!(res.stdout == data, "size {size} via stdout");
    }
}

/// A reader that fails after `left` bytes, like a disk read error or a dropped pipe.
struct FailingReader<'a> {
    data: &'a [u8],
    left: usize,
}

impl std::io::Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("device went away"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn failed_read_records_nothing_and_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = LocalStore::open(&dir.path().join("s"), None).unwrap();
    let data = data::mixed(20 << 20, 77);
    let reader = FailingReader {
        data: &data,
        left: 13 << 20,
    };
    let err = ingest::ingest(&store, reader, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("cannot read input"), "{err}");
    assert!(
        store.manifests().unwrap().is_empty(),
        "no manifest for a failed import"
    );
    let (m, report) = ingest::ingest(&store, &data[..], &|_| {}).unwrap();
    assert_eq!(m.file_id.to_hex(), b3(&data));
    assert!(
        report.new_bytes < data.len() as u64,
        "chunks committed before the failure are reused"
    );
    let mut out = Vec::new();
    restore::restore(&store, &m, &mut out, &|_| {}).unwrap();
    assert!(out == data);
}
