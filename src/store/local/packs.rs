//! Pack storage in a local directory: `STORE/packs/{n:016x}.pack`, one append-only file per
//! pack, `n` from the index's id counter (never reused). A sink owns its file exclusively (a
//! new file per sink), so concurrent imports never interleave bytes; a sync flushes and
//! fsyncs the file (the directory entry was synced when the file was made).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::local::fs::sync_dir;
use crate::store::pack::{
    ChunkLoc, ENTRY_HEADER_LEN, MAX_ENTRY, PACK_MAGIC, PACK_TARGET_LEN, new_entry, pack_path,
};
use crate::store::packs::{PackSink, PackStorage, PackSync};

/// Open pack handles kept for reading.
const MAX_OPEN_PACKS: usize = 64;

/// Where bad entries are copied by a repair, under the store directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Hands out pack numbers.
pub type PackIds = Box<dyn Fn() -> Result<u64> + Send + Sync>;

/// The packs of one store directory.
pub struct LocalPacks {
    dir: PathBuf,
    /// Where [`PackStorage::quarantine`] copies damaged entries.
    quarantine: PathBuf,
    ids: PackIds,
    /// A few files kept open for reading.
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl LocalPacks {
    /// The packs in `dir`, new ones numbered by `ids`; damaged entries are kept in
    /// `quarantine`.
    pub fn new(dir: PathBuf, quarantine: PathBuf, ids: PackIds) -> Self {
        LocalPacks {
            dir,
            quarantine,
            ids,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The packs' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, pack: u64) -> Result<Arc<File>> {
        let mut open = crate::lock(&self.open);
        if let Some(f) = open.get(&pack) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.dir, pack);
        let f = Arc::new(File::open(&path).map_err(Error::io("cannot open pack", &path))?);
        if open.len() >= MAX_OPEN_PACKS {
            open.clear();
        }
        open.insert(pack, f.clone());
        Ok(f)
    }
}

impl PackStorage for LocalPacks {
    fn create(&self) -> Result<Box<dyn PackSink>> {
        loop {
            match LocalSink::create(&self.dir, (self.ids)()?) {
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {}
                other => return other.map(|s| Box::new(s) as Box<dyn PackSink>),
            }
        }
    }

    fn read_at(&self, pack: u64, offset: u64, bufs: &mut [&mut [u8]]) -> Result<bool> {
        let file = self.file(pack)?;
        let mut at = offset;
        for buf in bufs {
            match file.read_exact_at(buf, at) {
                Ok(()) => at += buf.len() as u64,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(Error::io("cannot read pack", pack_path(&self.dir, pack))(e)),
            }
        }
        Ok(true)
    }

    fn read_all(&self, pack: u64) -> Result<Option<Box<dyn Read + Send>>> {
        let path = pack_path(&self.dir, pack);
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                f,
            )))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot open pack", &path)(e)),
        }
    }

    fn list(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(Error::io("cannot list packs in", &self.dir))?;
        for e in entries {
            let e = e.map_err(Error::io("cannot list packs in", &self.dir))?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .filter(|h| h.len() == 16)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            match e.metadata() {
                Ok(m) => out.push((n, m.len())),
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("cannot stat", e.path())(err)),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn delete(&self, packs: &[u64]) -> Result<()> {
        for &pack in packs {
            // Readers holding the handle go on; the next open finds the file gone.
            crate::lock(&self.open).remove(&pack);
            let path = pack_path(&self.dir, pack);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Error::io("cannot delete pack", &path)(e));
                }
                _ => {}
            }
        }
        if packs.is_empty() {
            return Ok(());
        }
        sync_dir(&self.dir)
    }

    fn quarantine(&self, id: &Hash, loc: &ChunkLoc) -> Result<Option<PathBuf>> {
        let src = pack_path(&self.dir, loc.pack);
        let file = match File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot open pack", &src)(e)),
        };
        let file_len = file
            .metadata()
            .map_err(Error::io("cannot stat", &src))?
            .len();
        let want = (ENTRY_HEADER_LEN as u64 + u64::from(loc.stored_len.min(MAX_ENTRY)))
            .min(file_len.saturating_sub(loc.offset));
        let mut bytes = vec![0; want as usize];
        file.read_exact_at(&mut bytes, loc.offset)
            .map_err(Error::io("cannot read pack", &src))?;
        let dir = &self.quarantine;
        std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
        let dst = dir.join(format!("{id}-{:016x}-{}.entry", loc.pack, loc.offset));
        let mut f = File::create(&dst).map_err(Error::io("cannot create", &dst))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(Error::io("cannot write", &dst))?;
        Ok(Some(dir.clone()))
    }
}

/// Appends entries to one pack file.
pub struct LocalSink {
    id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// True once bytes of this pack were handed to a sync: index entries may point here.
    shared: bool,
    /// True once a write failed: the file goes when the sink does, unless `shared`.
    abandoned: bool,
}

impl LocalSink {
    /// Creates pack `id` in `dir`; fails if it exists (packs are never reopened for writing).
    ///
    /// # Errors
    /// I/O errors, including `AlreadyExists`.
    pub fn create(dir: &Path, id: u64) -> Result<Self> {
        let path = pack_path(dir, id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("cannot create pack", &path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // The new directory entry must survive a crash before any index entry names the pack.
        let started = out
            .write_all(&PACK_MAGIC)
            .and_then(|()| out.flush())
            .and_then(|()| File::open(dir).and_then(|d| d.sync_all()));
        if let Err(e) = started {
            // A pack that could not even be started holds nothing: leave no empty file.
            let _ = std::fs::remove_file(&path);
            return Err(Error::io("cannot write pack", &path)(e));
        }
        Ok(LocalSink {
            id,
            path,
            out,
            len: PACK_MAGIC.len() as u64,
            shared: false,
            abandoned: false,
        })
    }

    fn is_empty(&self) -> bool {
        self.len == PACK_MAGIC.len() as u64
    }
}

impl PackSink for LocalSink {
    fn pack(&self) -> u64 {
        self.id
    }

    fn full(&self) -> bool {
        self.len >= PACK_TARGET_LEN
    }

    fn append(
        &mut self,
        id: &Hash,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<ChunkLoc> {
        let (header, loc) = new_entry(self.id, self.len, id, codec, raw_len, payload)
            .map_err(Error::io("cannot write pack", &self.path))?;
        self.out
            .write_all(&header)
            .and_then(|()| self.out.write_all(payload))
            .map_err(Error::io("cannot write pack", &self.path))?;
        self.len += (ENTRY_HEADER_LEN + payload.len()) as u64;
        Ok(loc)
    }

    fn start_sync(&mut self) -> Result<Box<dyn PackSync>> {
        // Hands the bytes to the kernel; a second handle to the file syncs them from any thread.
        self.shared = true;
        let file = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().try_clone())
            .map_err(Error::io("cannot write pack", &self.path))?;
        Ok(Box::new(LocalSync {
            file,
            path: self.path.clone(),
        }))
    }

    fn sync(&mut self) -> Result<()> {
        self.shared = true;
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(Error::io("cannot sync pack", &self.path))
    }

    fn abandon(mut self: Box<Self>) {
        self.abandoned = true;
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        // A pack nothing can point into (never synced) holds nothing of use once its sink is
        // gone after a failure, or if it never received an entry.
        if !self.shared && (self.abandoned || self.is_empty()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct LocalSync {
    file: File,
    path: PathBuf,
}

impl PackSync for LocalSync {
    fn wait(self: Box<Self>) -> Result<()> {
        self.file
            .sync_data()
            .map_err(Error::io("cannot sync pack", &self.path))
    }
}
