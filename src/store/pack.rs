//! Append-only pack files: where chunk bodies live.
//!
//! File format (version 1), all integers little-endian:
//!
//! ```text
//! pack   = "HOARDPK" 0x01, then entries back to back
//! entry  = "hCk1" | codec u8 | 3 zero bytes | raw_len u32 | stored_len u32 | chunk id [32] | payload
//! ```
//!
//! Every entry names its chunk, codec and lengths, so the index can be rebuilt from the packs
//! alone. A writer owns its pack file exclusively (a new file per writer), so concurrent
//! imports never interleave bytes. Durability: [`PackWriter::sync`] flushes and fsyncs before
//! the caller lets the index point at the new entries.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::hash::Hash;

/// First bytes of every pack file; the last byte is the format version.
pub const PACK_MAGIC: [u8; 8] = *b"HOARDPK\x01";
/// First bytes of every entry.
pub const ENTRY_MAGIC: [u8; 4] = *b"hCk1";
/// Bytes of an entry header = 48.
pub const ENTRY_HEADER_LEN: usize = 48;
/// A writer starts a new pack once its current one passes this size = 256 MiB.
pub const PACK_TARGET_LEN: u64 = 256 * 1024 * 1024;
/// Open pack handles kept for reading.
const MAX_OPEN_PACKS: usize = 64;

/// Where a chunk's entry is: the index value of the `chunks` tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// Pack number (file `packs/{pack:016x}.pack`).
    pub pack: u64,
    /// Offset of the entry header in the pack.
    pub offset: u64,
    /// Encoded payload length.
    pub stored_len: u32,
    /// Decoded chunk length.
    pub raw_len: u32,
    /// Codec tag of the payload.
    pub codec: u8,
}

/// Encodes an entry header.
pub fn entry_header(
    id: &Hash,
    codec: Codec,
    raw_len: u32,
    stored_len: u32,
) -> [u8; ENTRY_HEADER_LEN] {
    let mut h = [0u8; ENTRY_HEADER_LEN];
    h[0..4].copy_from_slice(&ENTRY_MAGIC);
    h[4] = codec as u8;
    h[8..12].copy_from_slice(&raw_len.to_le_bytes());
    h[12..16].copy_from_slice(&stored_len.to_le_bytes());
    h[16..48].copy_from_slice(id.as_bytes());
    h
}

/// Decodes an entry header: `(id, codec tag, raw_len, stored_len)`, or `None` if the magic
/// is wrong or the reserved bytes are not zero (so any damage to a header shows).
pub fn parse_entry_header(h: &[u8; ENTRY_HEADER_LEN]) -> Option<(Hash, u8, u32, u32)> {
    if h[0..4] != ENTRY_MAGIC || h[5..8] != [0, 0, 0] {
        return None;
    }
    let raw_len = u32::from_le_bytes(h[8..12].try_into().ok()?);
    let stored_len = u32::from_le_bytes(h[12..16].try_into().ok()?);
    Some((Hash::from_slice(&h[16..48])?, h[4], raw_len, stored_len))
}

/// The path of pack `n` under `dir`.
pub fn pack_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.pack"))
}

/// Appends entries to one pack file.
pub struct PackWriter {
    /// Pack number.
    pub id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// True once bytes of this pack were handed to a commit: index entries may point here.
    shared: bool,
}

impl PackWriter {
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
        Ok(PackWriter {
            id,
            path,
            out,
            len: PACK_MAGIC.len() as u64,
            shared: false,
        })
    }

    /// Removes the pack after a failed write, unless a commit may point into it (then its
    /// unreferenced tail is garbage for gc). Nothing of it is indexed otherwise.
    pub fn abandon(self) {
        if !self.shared {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Appends one entry; returns its location.
    ///
    /// # Errors
    /// I/O errors (a full disk among them).
    pub fn append(
        &mut self,
        id: &Hash,
        codec: Codec,
        raw_len: u32,
        payload: &[u8],
    ) -> Result<ChunkLoc> {
        let stored_len = u32::try_from(payload.len()).map_err(|_| {
            Error::io("cannot write pack", &self.path)(std::io::Error::other("entry over 4 GiB"))
        })?;
        let offset = self.len;
        let header = entry_header(id, codec, raw_len, stored_len);
        self.out
            .write_all(&header)
            .and_then(|()| self.out.write_all(payload))
            .map_err(Error::io("cannot write pack", &self.path))?;
        self.len += (ENTRY_HEADER_LEN + payload.len()) as u64;
        Ok(ChunkLoc {
            pack: self.id,
            offset,
            stored_len,
            raw_len,
            codec: codec as u8,
        })
    }

    /// Flushes and fsyncs: after this, every appended entry survives a crash.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&mut self) -> Result<()> {
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(Error::io("cannot sync pack", &self.path))
    }

    /// Hands appended bytes to the kernel and returns a second handle to the file, on which a
    /// `sync_data` makes them durable (from any thread).
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush_and_share(&mut self) -> Result<(File, PathBuf)> {
        self.shared = true;
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().try_clone())
            .map(|f| (f, self.path.clone()))
            .map_err(Error::io("cannot write pack", &self.path))
    }

    /// Bytes in the pack so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if and only if nothing but the pack header was written.
    pub fn is_empty(&self) -> bool {
        self.len == PACK_MAGIC.len() as u64
    }
}

/// Reads entries from the packs of one directory, keeping a few files open.
pub struct PackReader {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl PackReader {
    /// Reads packs in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        PackReader {
            dir,
            open: Mutex::new(HashMap::new()),
        }
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

    /// Reads the entry at `loc` and checks its header against the index: the payload comes back
    /// only if magic, id, codec and lengths all agree.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a header that disagrees or a short file; I/O errors otherwise.
    pub fn read(&self, id: &Hash, loc: &ChunkLoc) -> Result<(Codec, Vec<u8>)> {
        let mut payload = Vec::new();
        let codec = self.read_into(id, loc, &mut payload)?;
        Ok((codec, payload))
    }

    /// As [`PackReader::read`], into a caller's buffer (resized to the payload), so a hot
    /// loop reuses one allocation instead of faulting in fresh pages per chunk.
    ///
    /// # Errors
    /// As [`PackReader::read`].
    pub fn read_into(&self, id: &Hash, loc: &ChunkLoc, payload: &mut Vec<u8>) -> Result<Codec> {
        let file = self.file(loc.pack)?;
        let corrupt = |detail: String| Error::Corrupt { id: *id, detail };
        let read = |buf: &mut [u8], at: u64| match file.read_exact_at(buf, at) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                Err(corrupt(format!("pack {:016x} is truncated", loc.pack)))
            }
            Err(e) => Err(Error::io(
                "cannot read pack",
                pack_path(&self.dir, loc.pack),
            )(e)),
        };
        let mut header = [0u8; ENTRY_HEADER_LEN];
        read(&mut header, loc.offset)?;
        let codec = match parse_entry_header(&header) {
            Some((hid, tag, raw, stored))
                if hid == *id
                    && tag == loc.codec
                    && raw == loc.raw_len
                    && stored == loc.stored_len =>
            {
                Codec::from_tag(tag)
            }
            _ => None,
        }
        .ok_or_else(|| {
            corrupt(format!(
                "entry header at pack {:016x} offset {} does not match the index",
                loc.pack, loc.offset
            ))
        })?;
        payload.resize(loc.stored_len as usize, 0);
        read(payload, loc.offset + ENTRY_HEADER_LEN as u64)?;
        Ok(codec)
    }

    /// Closes the cached handle of a pack about to be deleted (readers holding it go on).
    pub fn forget(&self, pack: u64) {
        crate::lock(&self.open).remove(&pack);
    }

    /// Every pack file: `(pack number, length)`, in pack order. Files that vanish while
    /// listing (compaction) are left out.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn list(&self) -> Result<Vec<(u64, u64)>> {
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

    /// Sum of the sizes of all pack files.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn total_bytes(&self) -> Result<u64> {
        Ok(self.list()?.iter().map(|(_, len)| len).sum())
    }

    /// The packs' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
