// BLAKE3 in plain JavaScript: the chunk ids and file ids hoard computes in the browser.
//
// Written from the BLAKE3 specification (github.com/BLAKE3-team/BLAKE3-specs, "blake3.pdf"):
// the hash mode only (no key, no derive_key) with the default 32-byte output. The input is
// split into 1 KiB chunks of 64-byte blocks; each chunk is compressed into a chaining value
// (CV) with its index as the counter, and CVs are merged pairwise into a binary tree whose
// root, compressed with the ROOT flag, gives the hash. Words are read little-endian; every
// platform a browser runs on is little-endian, and this module refuses to load on one that
// is not rather than give wrong ids.
//
//   const id = new Blake3().update(bytes).update(more).hex();   // or blake3Hex(bytes)

const IV = new Int32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);
const CHUNK_START = 1;
const CHUNK_END = 2;
const PARENT = 4;
const ROOT = 8;
/** Bytes per block = 64; per chunk = 1024. */
const BLOCK_LEN = 64;
const CHUNK_LEN = 1024;
const TWO_POW_32 = 4294967296;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error('blake3.js needs a little-endian platform');
}

/**
 * The compression function: compresses the 16 words `m[mo..mo+16]` into the 8-word chaining
 * value `cv[co..co+8]` and writes the 8-word result to `out[oo..oo+8]` (which may alias `cv`
 * or `m`: everything is read before anything is written). `counter` is a chunk index (< 2^53).
 */
function compress(cv, co, m, mo, counter, blockLen, flags, out, oo) {
  let m0 = m[mo], m1 = m[mo + 1], m2 = m[mo + 2], m3 = m[mo + 3];
  let m4 = m[mo + 4], m5 = m[mo + 5], m6 = m[mo + 6], m7 = m[mo + 7];
  let m8 = m[mo + 8], m9 = m[mo + 9], m10 = m[mo + 10], m11 = m[mo + 11];
  let m12 = m[mo + 12], m13 = m[mo + 13], m14 = m[mo + 14], m15 = m[mo + 15];
  let v0 = cv[co], v1 = cv[co + 1], v2 = cv[co + 2], v3 = cv[co + 3];
  let v4 = cv[co + 4], v5 = cv[co + 5], v6 = cv[co + 6], v7 = cv[co + 7];
  let v8 = IV[0], v9 = IV[1], v10 = IV[2], v11 = IV[3];
  let v12 = counter | 0, v13 = (counter / TWO_POW_32) | 0, v14 = blockLen, v15 = flags;
  for (let round = 0; ; round++) {
    // Seven rounds of G(a, b, c, d, x, y): a += b + x; d = (d ^ a) >>> 16; c += d;
    // b = (b ^ c) >>> 12; a += b + y; d = (d ^ a) >>> 8; c += d; b = (b ^ c) >>> 7
    // (>>> meaning rotate right), on the columns and then the diagonals of the 4x4 state.
      // columns
      v0 = (v0 + v4 + m0) | 0; v12 ^= v0; v12 = (v12 >>> 16) | (v12 << 16);
      v8 = (v8 + v12) | 0; v4 ^= v8; v4 = (v4 >>> 12) | (v4 << 20);
      v0 = (v0 + v4 + m1) | 0; v12 ^= v0; v12 = (v12 >>> 8) | (v12 << 24);
      v8 = (v8 + v12) | 0; v4 ^= v8; v4 = (v4 >>> 7) | (v4 << 25);
      v1 = (v1 + v5 + m2) | 0; v13 ^= v1; v13 = (v13 >>> 16) | (v13 << 16);
      v9 = (v9 + v13) | 0; v5 ^= v9; v5 = (v5 >>> 12) | (v5 << 20);
      v1 = (v1 + v5 + m3) | 0; v13 ^= v1; v13 = (v13 >>> 8) | (v13 << 24);
      v9 = (v9 + v13) | 0; v5 ^= v9; v5 = (v5 >>> 7) | (v5 << 25);
      v2 = (v2 + v6 + m4) | 0; v14 ^= v2; v14 = (v14 >>> 16) | (v14 << 16);
      v10 = (v10 + v14) | 0; v6 ^= v10; v6 = (v6 >>> 12) | (v6 << 20);
      v2 = (v2 + v6 + m5) | 0; v14 ^= v2; v14 = (v14 >>> 8) | (v14 << 24);
      v10 = (v10 + v14) | 0; v6 ^= v10; v6 = (v6 >>> 7) | (v6 << 25);
      v3 = (v3 + v7 + m6) | 0; v15 ^= v3; v15 = (v15 >>> 16) | (v15 << 16);
      v11 = (v11 + v15) | 0; v7 ^= v11; v7 = (v7 >>> 12) | (v7 << 20);
      v3 = (v3 + v7 + m7) | 0; v15 ^= v3; v15 = (v15 >>> 8) | (v15 << 24);
      v11 = (v11 + v15) | 0; v7 ^= v11; v7 = (v7 >>> 7) | (v7 << 25);
      // diagonals
      v0 = (v0 + v5 + m8) | 0; v15 ^= v0; v15 = (v15 >>> 16) | (v15 << 16);
      v10 = (v10 + v15) | 0; v5 ^= v10; v5 = (v5 >>> 12) | (v5 << 20);
      v0 = (v0 + v5 + m9) | 0; v15 ^= v0; v15 = (v15 >>> 8) | (v15 << 24);
      v10 = (v10 + v15) | 0; v5 ^= v10; v5 = (v5 >>> 7) | (v5 << 25);
      v1 = (v1 + v6 + m10) | 0; v12 ^= v1; v12 = (v12 >>> 16) | (v12 << 16);
      v11 = (v11 + v12) | 0; v6 ^= v11; v6 = (v6 >>> 12) | (v6 << 20);
      v1 = (v1 + v6 + m11) | 0; v12 ^= v1; v12 = (v12 >>> 8) | (v12 << 24);
      v11 = (v11 + v12) | 0; v6 ^= v11; v6 = (v6 >>> 7) | (v6 << 25);
      v2 = (v2 + v7 + m12) | 0; v13 ^= v2; v13 = (v13 >>> 16) | (v13 << 16);
      v8 = (v8 + v13) | 0; v7 ^= v8; v7 = (v7 >>> 12) | (v7 << 20);
      v2 = (v2 + v7 + m13) | 0; v13 ^= v2; v13 = (v13 >>> 8) | (v13 << 24);
      v8 = (v8 + v13) | 0; v7 ^= v8; v7 = (v7 >>> 7) | (v7 << 25);
      v3 = (v3 + v4 + m14) | 0; v14 ^= v3; v14 = (v14 >>> 16) | (v14 << 16);
      v9 = (v9 + v14) | 0; v4 ^= v9; v4 = (v4 >>> 12) | (v4 << 20);
      v3 = (v3 + v4 + m15) | 0; v14 ^= v3; v14 = (v14 >>> 8) | (v14 << 24);
      v9 = (v9 + v14) | 0; v4 ^= v9; v4 = (v4 >>> 7) | (v4 << 25);
    if (round === 6) break;
    // The next round takes the message words in the order m[PERMUTATION[i]].
    const p0 = m0, p1 = m1, p2 = m2, p3 = m3, p4 = m4, p5 = m5, p6 = m6, p7 = m7;
    const p8 = m8, p9 = m9, p10 = m10, p11 = m11, p12 = m12, p13 = m13, p14 = m14, p15 = m15;
    m0 = p2; m1 = p6; m2 = p3; m3 = p10; m4 = p7; m5 = p0; m6 = p4; m7 = p13;
    m8 = p1; m9 = p11; m10 = p12; m11 = p5; m12 = p9; m13 = p14; m14 = p15; m15 = p8;
  }
  out[oo] = v0 ^ v8; out[oo + 1] = v1 ^ v9; out[oo + 2] = v2 ^ v10; out[oo + 3] = v3 ^ v11;
  out[oo + 4] = v4 ^ v12; out[oo + 5] = v5 ^ v13; out[oo + 6] = v6 ^ v14; out[oo + 7] = v7 ^ v15;
}

/** An incremental BLAKE3 hasher: `update()` any number of times, then `digest()` or `hex()`. */
export class Blake3 {
  constructor() {
    /** CV of the chunk being hashed. */
    this.cv = new Int32Array(8);
    /** The block not yet compressed (the last block of a chunk waits to learn if it is the end). */
    this.block = new Uint8Array(BLOCK_LEN);
    this.blockWords = new Int32Array(this.block.buffer);
    /** CVs of completed subtrees, 8 words each, largest first: at most 54 for 2^64 bytes. */
    this.stack = new Int32Array(54 * 8);
    /** Word-aligned copy of unaligned input, so the compression reads it as Int32 words. */
    this.scratch = new Uint8Array(CHUNK_LEN);
    this.scratchWords = new Int32Array(this.scratch.buffer);
    this.reset();
  }

  /** Forgets everything hashed so far (reuse one hasher for many chunks). */
  reset() {
    this.cv.set(IV);
    this.chunkCounter = 0; // index of the current chunk
    this.blocksDone = 0; // blocks of the current chunk already compressed
    this.blockLen = 0; // bytes in `block`
    this.stackLen = 0;
    return this;
  }

  /** Hashes `data` (a Uint8Array) after what came before; returns `this`. */
  update(data) {
    const n = data.length;
    let p = 0;
    while (p < n) {
      // A chunk is closed only once more input shows it is not the last (it could be the root).
      if (this.blocksDone * BLOCK_LEN + this.blockLen === CHUNK_LEN) {
        compress(this.cv, 0, this.blockWords, 0, this.chunkCounter, BLOCK_LEN,
          CHUNK_END | (this.blocksDone === 0 ? CHUNK_START : 0), this.cv, 0);
        this.pushChunk();
      }
      if (this.blockLen === 0 && n - p > BLOCK_LEN) {
        // Fast path: whole blocks straight from the input, up to the end of this chunk, always
        // leaving at least one byte (the last block must wait to know if it ends the input).
        const blocks = Math.min(16 - this.blocksDone, Math.floor((n - p - 1) / BLOCK_LEN));
        const len = blocks * BLOCK_LEN;
        let words = this.scratchWords;
        let wo = 0;
        if (((data.byteOffset + p) & 3) === 0) {
          words = new Int32Array(data.buffer, data.byteOffset + p, len >> 2);
        } else {
          this.scratch.set(data.subarray(p, p + len));
        }
        for (let b = 0; b < blocks; b++, wo += 16) {
          let flags = this.blocksDone === 0 ? CHUNK_START : 0;
          if (this.blocksDone === 15) flags |= CHUNK_END; // more input follows: not the root
          compress(this.cv, 0, words, wo, this.chunkCounter, BLOCK_LEN, flags, this.cv, 0);
          if (this.blocksDone === 15) this.pushChunk();
          else this.blocksDone++;
        }
        p += len;
        continue;
      }
      // Slow path: fill the block buffer; compress it once more input follows.
      const take = Math.min(BLOCK_LEN - this.blockLen, n - p);
      this.block.set(data.subarray(p, p + take), this.blockLen);
      this.blockLen += take;
      p += take;
      if (this.blockLen === BLOCK_LEN && p < n && this.blocksDone < 15) {
        compress(this.cv, 0, this.blockWords, 0, this.chunkCounter, BLOCK_LEN,
          this.blocksDone === 0 ? CHUNK_START : 0, this.cv, 0);
        this.blocksDone++;
        this.blockLen = 0;
      }
    }
    return this;
  }

  /**
   * Adds the finished chunk's CV (in `this.cv`) to the tree: after chunk number k (counting
   * from 1), merge one pair of subtrees per trailing zero bit of k. Then starts the next chunk.
   */
  pushChunk() {
    const s = this.stack;
    s.set(this.cv, this.stackLen * 8);
    this.stackLen++;
    for (let total = this.chunkCounter + 1; total % 2 === 0; total /= 2) {
      this.stackLen -= 2;
      const at = this.stackLen * 8; // left CV and right CV are the 16 words at `at`
      compress(IV, 0, s, at, 0, BLOCK_LEN, PARENT, s, at);
      this.stackLen++;
    }
    this.chunkCounter++;
    this.blocksDone = 0;
    this.blockLen = 0;
    this.cv.set(IV);
  }

  /** The 32-byte hash of everything given so far (the hasher can go on being updated). */
  digest() {
    this.block.fill(0, this.blockLen); // the last block is zero-padded
    const out = new Int32Array(8);
    let flags = CHUNK_END | (this.blocksDone === 0 ? CHUNK_START : 0);
    if (this.stackLen === 0) {
      compress(this.cv, 0, this.blockWords, 0, this.chunkCounter, this.blockLen, flags | ROOT, out, 0);
    } else {
      compress(this.cv, 0, this.blockWords, 0, this.chunkCounter, this.blockLen, flags, out, 0);
      // Fold the stack from the right: each parent takes a stacked CV and the CV so far.
      const pair = new Int32Array(16);
      for (let i = this.stackLen - 1; i >= 0; i--) {
        pair.set(this.stack.subarray(i * 8, i * 8 + 8));
        pair.set(out, 8);
        compress(IV, 0, pair, 0, 0, BLOCK_LEN, PARENT | (i === 0 ? ROOT : 0), out, 0);
      }
    }
    return new Uint8Array(out.buffer);
  }

  /** The hash as 64 lowercase hex digits. */
  hex() {
    return toHex(this.digest());
  }
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Lowercase hex of a byte array. */
export function toHex(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += HEX[bytes[i]];
  return s;
}

/** BLAKE3 of `data` in one call, as 64 hex digits. */
export function blake3Hex(data) {
  return new Blake3().update(data).hex();
}
