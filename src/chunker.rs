//! Stage 1 of ingest: splits a byte stream into content-defined chunks (FastCDC 2020).
//!
//! Cut points depend only on the bytes and [`ChunkerParams`]; changing the params moves every
//! boundary, which is why each manifest records them. The cut function, masks and gear table are
//! the `fastcdc` crate's own (`v2020::cut_gear`, normalization level 1, seed 0), so boundaries are
//! identical to `fastcdc::v2020::FastCDC` and `StreamCDC` with the same sizes; the fixture test in
//! `tests/` pins them. Unlike `StreamCDC`, which copies its buffer once per chunk, this reader cuts
//! whole blocks of several MiB and copies only the unfinished tail, so one core cuts faster than
//! the rest of the pipeline consumes.

use std::io::{ErrorKind, Read};
use std::ops::Range;

use fastcdc::v2020::{MASKS, Normalization, cut_gear, get_gear_with_seed, logarithm2};

use crate::config::ChunkerParams;

/// Default bytes read per block = 4 MiB: big enough that the tail copy is cheap, small enough
/// that a few blocks in flight stay well inside the memory budget.
pub const DEFAULT_BLOCK_SIZE: usize = 4 * 1024 * 1024;

/// The precomputed constants of one FastCDC 2020 configuration.
#[derive(Clone)]
pub struct Cutter {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl Cutter {
    /// Prepares masks and the gear table for `params` (already validated).
    pub fn new(params: ChunkerParams) -> Self {
        let bits = logarithm2(params.avg);
        let norm = Normalization::Level1.bits();
        let (gear, gear_ls) = get_gear_with_seed(0);
        Cutter {
            params,
            mask_s: MASKS[(bits + norm) as usize],
            mask_l: MASKS[(bits - norm) as usize],
            gear,
            gear_ls,
        }
    }

    /// The largest chunk these params cut.
    pub fn max(&self) -> u32 {
        self.params.max
    }

    /// Length of the chunk starting at `data[0]`, given that `data` either reaches the end of
    /// the stream or holds at least `max` bytes.
    pub fn next_len(&self, data: &[u8]) -> usize {
        let p = &self.params;
        cut_gear(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        )
        .1
    }

    /// Chunk lengths of a whole in-memory buffer (tests, benches, small inputs).
    pub fn lengths(&self, data: &[u8]) -> Vec<usize> {
        lengths(&self.ends(data, data.len())).collect()
    }
}

/// How the cut loop works, in words, for `GET /v1/config` (the README's "The chunker, as a
/// spec" has it in pseudocode).
const CUT_RULE: &str = "len(src) <= min: the rest is one chunk. Else n = min(len(src), max), \
center = avg (or n if n < avg); h = 0; for each pair of bytes a, a+1 from a = 2*(min/2) while \
a + 1 < n: h = (h << 2) + gear_ls[src[a]], cut at a if h & mask_ls == 0; h = h + gear[src[a+1]], \
cut at a+1 if h & mask == 0; where mask is mask_s (mask_s_ls) while a < 2*(center/2), else \
mask_l (mask_l_ls). No cut: the chunk is n bytes. Cutting at i makes a chunk of i bytes: the \
byte that matched starts the next chunk. Wrapping 64-bit arithmetic; h restarts at 0 for each \
chunk; a chunk is final once max bytes follow its start or the stream ends.";

/// Everything a client in another language needs to cut the chunks these params cut: the
/// algorithm, sizes, normalization, the four masks, both gear tables and the cut rule
/// (`GET /v1/config`'s `chunker`). Numbers over 2^53 are `0x` + 16 hex digits.
pub fn published(params: ChunkerParams) -> serde_json::Value {
    let c = Cutter::new(params);
    let hex = |v: u64| format!("0x{v:016x}");
    serde_json::json!({
        "algorithm": "fastcdc",
        "version": "2020",
        "min": params.min,
        "avg": params.avg,
        "max": params.max,
        "normalization": Normalization::Level1.bits(),
        "gear_seed": 0,
        "mask_s": hex(c.mask_s),
        "mask_l": hex(c.mask_l),
        "mask_s_ls": hex(c.mask_s << 1),
        "mask_l_ls": hex(c.mask_l << 1),
        "gear": c.gear.iter().map(|&g| hex(g)).collect::<Vec<_>>(),
        "gear_ls": c.gear_ls.iter().map(|&g| hex(g)).collect::<Vec<_>>(),
        "cut": CUT_RULE,
    })
}

/// A run of whole chunks cut from the stream, in order.
pub struct Block {
    /// Offset of `data[0]` in the stream.
    pub offset: u64,
    /// The bytes of the chunks, back to back.
    pub data: Vec<u8>,
    /// Length of each chunk in `data`.
    pub lens: Vec<u32>,
}

impl Block {
    /// Byte ranges of the chunks within `data`.
    pub fn spans(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.lens.iter().scan(0usize, |pos, &len| {
            let start = *pos;
            *pos += len as usize;
            Some(start..*pos)
        })
    }
}

/// Reads a stream and hands out [`Block`]s of whole chunks.
pub struct Chunker<R> {
    reader: R,
    cutter: Cutter,
    block_size: usize,
    /// Bytes read but not yet cut (always fewer than `max` unless at EOF).
    tail: Vec<u8>,
    offset: u64,
    eof: bool,
    spare: Option<Vec<u8>>,
}

impl<R: Read> Chunker<R> {
    /// Cuts `reader` with `params`, reading about `block_size` bytes per block.
    pub fn new(reader: R, params: ChunkerParams, block_size: usize) -> Self {
        Chunker {
            reader,
            cutter: Cutter::new(params),
            block_size: block_size.max(2 * params.max as usize),
            tail: Vec::new(),
            offset: 0,
            eof: false,
            spare: None,
        }
    }

    /// Gives a consumed block's buffer back for reuse, saving an allocation per block.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.spare = Some(buf);
    }

    /// The next block of chunks, or `None` at the end of the stream.
    ///
    /// # Errors
    /// The reader's error; the stream position is then undefined.
    pub fn next_block(&mut self) -> std::io::Result<Option<Block>> {
        let mut buf = self.spare.take().unwrap_or_default();
        // A recycled buffer keeps its length, so this zeroes only the part past its last cut.
        buf.resize(self.block_size, 0);
        let mut filled = self.tail.len();
        buf[..filled].copy_from_slice(&self.tail);
        self.tail.clear();
        while !self.eof && filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        // A chunk may start at `pos` only if the bytes up to `max` past it are here (or the
        // stream ends first): then its cut is the same as on the whole stream.
        let max = self.cutter.params.max as usize;
        let limit = if self.eof {
            filled
        } else {
            (filled + 1).saturating_sub(max)
        };
        let ends = self.cutter.ends(&buf[..filled], limit);
        let pos = ends.last().copied().unwrap_or(0);
        let lens = lengths(&ends).map(|l| l as u32).collect();
        self.tail.extend_from_slice(&buf[pos..filled]);
        buf.truncate(pos);
        let block = Block {
            offset: self.offset,
            data: buf,
            lens,
        };
        self.offset += pos as u64;
        Ok(Some(block))
    }
}

/// Differences between consecutive chunk ends, starting from 0.
fn lengths(ends: &[usize]) -> impl Iterator<Item = usize> + '_ {
    ends.iter()
        .scan(0, |prev, &e| Some(e - std::mem::replace(prev, e)))
}

impl Cutter {
    /// End offsets of the chunks of `data` that start before `limit`.
    fn ends(&self, data: &[u8], limit: usize) -> Vec<usize> {
        let mut ends = Vec::with_capacity(limit / self.params.avg as usize + 2);
        let mut pos = 0;
        while pos < limit {
            pos += self.next_len(&data[pos..]);
            ends.push(pos);
        }
        ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn blocks_cut_exactly_like_the_fastcdc_crate() {
        let p = ChunkerParams::new(1024, 4096, 16384).unwrap();
        let data = noise(1_000_003, 7);
        let expected: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, p.min, p.avg, p.max)
            .map(|c| c.length)
            .collect();
        for block_size in [1, 40_000, 65_536, 1 << 20] {
            let mut ch = Chunker::new(&data[..], p, block_size);
            let mut got = Vec::new();
            let mut offset = 0u64;
            while let Some(b) = ch.next_block().unwrap() {
                assert_eq!(b.offset, offset);
                assert_eq!(
                    b.data.len(),
                    b.lens.iter().map(|&l| l as usize).sum::<usize>()
                );
                offset += b.data.len() as u64;
                got.extend(b.lens.iter().map(|&l| l as usize));
                ch.recycle(b.data);
            }
            assert_eq!(got, expected, "block size {block_size}");
        }
        assert_eq!(Cutter::new(p).lengths(&data), expected);
    }
}
