//! Wire formats of the HTTP API, shared by the server and the client: packed id lists, chunk
//! frames and flat manifests. All integers are little-endian; every parser checks lengths
//! before it allocates, so a hostile body costs at most its own size.
//!
//! ```text
//! id list        : id[32] *                                   (application/octet-stream)
//! chunk frames   : ( id[32] codec[1] raw_len[4] payload_len[4] payload[payload_len] ) *
//! flat manifest  : "HMF1" min[4] avg[4] max[4] ( id[32] len[4] ) * count[8] size[8] file_id[32]
//! ```
//!
//! The manifest's totals and file id come last, so a client can stream it while it is still
//! reading the file, and the server can start on the chunks before the body ends.
//!
//! A frame's codec is 0 (raw) or 1 (one zstd frame); `raw_len` is the chunk's length, which
//! caps decompression.

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hash::{HASH_LEN, Hash};
use crate::manifest::ChunkRef;

/// Content type of the binary encodings.
pub const BINARY: &str = "application/octet-stream";
/// Bytes before a frame's payload = 41.
pub const FRAME_HEADER_LEN: usize = HASH_LEN + 1 + 4 + 4;
/// Magic at the start of a binary flat manifest.
const MANIFEST_MAGIC: &[u8; 4] = b"HMF1";
/// Bytes of a binary flat manifest before its refs = 16.
const MANIFEST_HEADER_LEN: usize = 4 + 12;
/// Bytes of a binary flat manifest after its refs = 48.
const MANIFEST_TRAILER_LEN: usize = 8 + 8 + HASH_LEN;
/// Bytes of one ref in a binary flat manifest = 36.
const REF_LEN: usize = HASH_LEN + 4;

fn malformed(what: &'static str, detail: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Packs ids back to back.
pub fn pack_ids(ids: &[Hash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * HASH_LEN);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Unpacks a packed id list of at most `max` ids.
///
/// # Errors
/// [`Error::Malformed`] if the length is not a multiple of 32, [`Error::TooLarge`] past `max`.
pub fn unpack_ids(body: &[u8], max: usize) -> Result<Vec<Hash>> {
    if !body.len().is_multiple_of(HASH_LEN) {
        return Err(malformed(
            "id list",
            format!("{} bytes is not a multiple of 32", body.len()),
        ));
    }
    let n = body.len() / HASH_LEN;
    if n > max {
        return Err(Error::TooLarge {
            what: "id list",
            size: n as u64,
            limit: max as u64,
        });
    }
    Ok(body
        .chunks_exact(HASH_LEN)
        .map(|c| Hash::from_slice(c).expect("32 bytes"))
        .collect())
}

/// One chunk in a frame body, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The id it is sent under.
    pub id: Hash,
    /// How `payload` is encoded.
    pub codec: Codec,
    /// The chunk's length.
    pub raw_len: u32,
    /// The encoded bytes.
    pub payload: &'a [u8],
}

/// Appends one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, id: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) {
    out.extend_from_slice(id.as_bytes());
    out.push(codec as u8);
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses the frame at the start of `buf`: `Ok(None)` if `buf` does not hold a whole frame yet,
/// else the frame and the bytes it took.
///
/// # Errors
/// [`Error::Malformed`] for an unknown codec, a zero length, or a raw payload whose length is
/// not `raw_len`; [`Error::TooLarge`] if `raw_len` or the payload is over `max_chunk`.
pub fn parse_frame(buf: &[u8], max_chunk: u32) -> Result<Option<(Frame<'_>, usize)>> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let id = Hash::from_slice(&buf[..HASH_LEN]).expect("32 bytes");
    // A delta is how a store keeps a chunk, never what a client sends.
    let codec = Codec::from_tag(buf[HASH_LEN])
        .filter(|c| *c != Codec::Delta)
        .ok_or_else(|| malformed("chunk frame", format!("unknown codec {}", buf[HASH_LEN])))?;
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let raw_len = u32_at(HASH_LEN + 1);
    let payload_len = u32_at(HASH_LEN + 5);
    for (what, size) in [("chunk", raw_len), ("chunk payload", payload_len)] {
        if size > max_chunk {
            return Err(Error::TooLarge {
                what,
                size: size.into(),
                limit: max_chunk.into(),
            });
        }
    }
    if raw_len == 0 || payload_len == 0 {
        return Err(malformed("chunk frame", format!("empty chunk {id}")));
    }
    if codec == Codec::Raw && raw_len != payload_len {
        return Err(malformed(
            "chunk frame",
            format!("raw chunk {id} has {payload_len} payload bytes for a length of {raw_len}"),
        ));
    }
    let end = FRAME_HEADER_LEN + payload_len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let frame = Frame {
        id,
        codec,
        raw_len,
        payload: &buf[FRAME_HEADER_LEN..end],
    };
    Ok(Some((frame, end)))
}

/// Parses a whole body of frames.
///
/// # Errors
/// As [`parse_frame`], and [`Error::Malformed`] if the body ends inside a frame.
pub fn parse_frames(body: &[u8], max_chunk: u32) -> Result<Vec<Frame<'_>>> {
    match parse_frames_until_bad(body, max_chunk) {
        (frames, None) => Ok(frames),
        (_, Some(e)) => Err(e),
    }
}

/// Parses frames up to the first that does not parse: the frames before it, and its error
/// (its index is the number of frames returned).
pub fn parse_frames_until_bad(mut body: &[u8], max_chunk: u32) -> (Vec<Frame<'_>>, Option<Error>) {
    let mut frames = Vec::new();
    while !body.is_empty() {
        match parse_frame(body, max_chunk) {
            Ok(Some((frame, used))) => {
                frames.push(frame);
                body = &body[used..];
            }
            Ok(None) => {
                let e = malformed(
                    "chunk frame",
                    format!("body ends inside a frame ({} bytes left)", body.len()),
                );
                return (frames, Some(e));
            }
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

/// A whole manifest in one piece, as the API sends and takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlatManifest {
    /// The file id (BLAKE3 of the whole file).
    pub id: Hash,
    /// The file's length.
    pub size: u64,
    /// The params the client cut with; the store's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunker: Option<ChunkerParams>,
    /// The chunks in file order.
    pub chunks: Vec<ChunkRef>,
}

impl FlatManifest {
    /// Encodes it in the binary form.
    pub fn to_binary(&self, store_params: ChunkerParams) -> Vec<u8> {
        let c = self.chunker.unwrap_or(store_params);
        let mut out = manifest_head(c);
        out.reserve(self.chunks.len() * REF_LEN + MANIFEST_TRAILER_LEN);
        out.extend_from_slice(&manifest_refs(&self.chunks));
        out.extend_from_slice(&manifest_tail(
            self.chunks.len() as u64,
            self.size,
            &self.id,
        ));
        out
    }

    /// Decodes the binary form.
    ///
    /// # Errors
    /// [`Error::Malformed`] if the magic, the count or the body length are wrong, or the
    /// params are out of range.
    pub fn from_binary(body: &[u8]) -> Result<Self> {
        let mut r = ManifestReader::default();
        let mut chunks = r.push(body)?;
        let (chunker, id, size) = r.finish()?;
        chunks.shrink_to_fit();
        Ok(FlatManifest {
            id,
            size,
            chunker: Some(chunker),
            chunks,
        })
    }
}

/// The start of a binary manifest: magic and params.
pub fn manifest_head(c: ChunkerParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN);
    out.extend_from_slice(MANIFEST_MAGIC);
    for v in [c.min, c.avg, c.max] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Refs in the binary manifest form.
pub fn manifest_refs(refs: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * REF_LEN);
    for r in refs {
        out.extend_from_slice(r.id.as_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
    }
    out
}

/// The end of a binary manifest: ref count, file size, file id.
pub fn manifest_tail(count: u64, size: u64, id: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(MANIFEST_TRAILER_LEN);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out
}

/// Parses a binary manifest as it streams in: refs come out as soon as they are known not
/// to be the trailer.
#[derive(Default)]
pub struct ManifestReader {
    buf: Vec<u8>,
    chunker: Option<ChunkerParams>,
    refs: u64,
}

impl ManifestReader {
    /// The params, once the header has arrived.
    pub fn chunker(&self) -> Option<ChunkerParams> {
        self.chunker
    }

    /// Takes more bytes; returns the refs they complete.
    ///
    /// # Errors
    /// [`Error::Malformed`] for a wrong magic or params out of range.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<ChunkRef>> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        if self.chunker.is_none() {
            if self.buf.len() < MANIFEST_HEADER_LEN {
                return Ok(Vec::new());
            }
            if &self.buf[..4] != MANIFEST_MAGIC {
                return Err(malformed("manifest", "not a binary manifest (magic HMF1)"));
            }
            let u32_at =
                |i: usize| u32::from_le_bytes(self.buf[i..i + 4].try_into().expect("4 bytes"));
            let c = ChunkerParams::new(u32_at(4), u32_at(8), u32_at(12))
                .map_err(|e| malformed("manifest", e.to_string()))?;
            self.chunker = Some(c);
            at = MANIFEST_HEADER_LEN;
        }
        // Whatever may still be the trailer stays in the buffer.
        let usable = self.buf.len().saturating_sub(at + MANIFEST_TRAILER_LEN) / REF_LEN;
        let refs: Vec<ChunkRef> = self.buf[at..at + usable * REF_LEN]
            .chunks_exact(REF_LEN)
            .map(|r| ChunkRef {
                id: Hash::from_slice(&r[..HASH_LEN]).expect("32 bytes"),
                len: u32::from_le_bytes(r[HASH_LEN..].try_into().expect("4 bytes")),
            })
            .collect();
        self.refs += refs.len() as u64;
        self.buf.drain(..at + usable * REF_LEN);
        Ok(refs)
    }

    /// Ends the stream; returns the params, the file id and the size.
    ///
    /// # Errors
    /// [`Error::Malformed`] if the body ended early or the count is not the refs received.
    pub fn finish(self) -> Result<(ChunkerParams, Hash, u64)> {
        let bad = |detail: &str| malformed("manifest", detail);
        let chunker = self
            .chunker
            .ok_or_else(|| bad("not a binary manifest (magic HMF1)"))?;
        if self.buf.len() != MANIFEST_TRAILER_LEN {
            return Err(bad(
                "body length does not fit whole chunk refs and the trailer",
            ));
        }
        let count = u64::from_le_bytes(self.buf[..8].try_into().expect("8 bytes"));
        let size = u64::from_le_bytes(self.buf[8..16].try_into().expect("8 bytes"));
        let id = Hash::from_slice(&self.buf[16..]).expect("32 bytes");
        if count != self.refs {
            return Err(bad("chunk count does not match the refs sent"));
        }
        Ok((chunker, id, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_partial_input() {
        let mut body = Vec::new();
        put_frame(&mut body, &Hash::of(b"a"), Codec::Raw, 3, b"abc");
        put_frame(&mut body, &Hash::of(b"b"), Codec::Zstd, 100, b"zz");
        let frames = parse_frames(&body, 1000).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].payload, b"zz");
        assert_eq!(
            parse_frame(&body[..FRAME_HEADER_LEN + 2], 1000).unwrap(),
            None
        );
        assert!(parse_frames(&body[..body.len() - 1], 1000).is_err());
        assert!(matches!(
            parse_frames(&body, 50),
            Err(Error::TooLarge { size: 100, .. })
        ));
        // A delta is how a store keeps a chunk: a client cannot send one.
        let mut delta = Vec::new();
        put_frame(&mut delta, &Hash::of(b"d"), Codec::Delta, 100, &[7u8; 40]);
        assert!(matches!(
            parse_frames(&delta, 1000),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn manifests_round_trip_and_refuse_bad_counts() {
        let m = FlatManifest {
            id: Hash::of(b"f"),
            size: 7,
            chunker: Some(ChunkerParams::DEFAULT),
            chunks: vec![ChunkRef {
                id: Hash::of(b"c"),
                len: 7,
            }],
        };
        let bin = m.to_binary(ChunkerParams::DEFAULT);
        assert_eq!(FlatManifest::from_binary(&bin).unwrap(), m);
        assert!(FlatManifest::from_binary(&bin[..bin.len() - 1]).is_err());
        // Streamed one byte at a time, the same refs come out.
        let mut r = ManifestReader::default();
        let mut refs = Vec::new();
        for b in &bin {
            refs.extend(r.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(refs, m.chunks);
        assert_eq!(r.finish().unwrap(), (ChunkerParams::DEFAULT, m.id, 7));
        assert!(unpack_ids(&[0; 33], 10).is_err());
        assert!(matches!(
            unpack_ids(&[0; 64], 1),
            Err(Error::TooLarge { .. })
        ));
    }
}
