// FastCDC 2020 in plain JavaScript: cuts a byte stream into the same chunks as hoard's server.
//
// Cut points are those of the Rust `fastcdc` crate 3.2.1, `v2020::cut_gear` with normalization
// level 1 and gear seed 0 (what `src/chunker.rs` calls): same masks, same gear tables, same
// two-bytes-per-step loop, same handling of `min`, `avg`, `max` and of the end of the data.
// `tests/js/vectors.test.mjs` pins them to the cut lists in `fixtures/`. The gear hash is a
// 64-bit wrapping integer; JavaScript has no fast one, so it is kept as two int32 halves.
//
//   const stream = new ChunkStream({ min, avg, max });
//   for (const c of stream.push(bytes, atEnd)) use(c.offset, c.bytes);

/** Bounds on the sizes, as the crate's MINIMUM_MIN..AVERAGE_MAX..MAXIMUM_MAX. */
const BOUNDS = { min: [64, 1048576], avg: [256, 4194304], max: [1024, 16777216] };

// The crate's MASKS[5..=25] (index = bits of the size; 0..4 are unused), from
// fastcdc-3.2.1/src/v2020/mod.rs, as [high 32 bits, low 32 bits].
const MASKS = [
  '0000000001804110', '0000000001803110', '0000000018035100', '0000001800035300',
  '0000019000353000', '0000590003530000', '0000d90003530000', '0000d90103530000',
  '0000d90303530000', '0000d90313530000', '0000d90f03530000', '0000d90303537000',
  '0000d90703537000', '0000d90707537000', '0000d91707537000', '0000d91747537000',
  '0000d91767537000', '0000d93767537000', '0000d93777537000', '0000d93777577000',
  '0000db3777577000',
].map((h) => [parseInt(h.slice(0, 8), 16) | 0, parseInt(h.slice(8), 16) | 0]);
const MASKS_FIRST = 5;

/**
 * MD5 of a short message, only to build the gear table below (browsers offer no MD5).
 * Written from RFC 1321; the constants K[i] = floor(|sin(i + 1)| * 2^32) are all at least
 * 0.015 away from an integer, so any engine's Math.sin gives the exact values.
 */
function md5(bytes) {
  const K = Int32Array.from({ length: 64 }, (_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32));
  const S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
  const padded = new Uint8Array((((bytes.length + 8) >> 6) + 1) * 64);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  new DataView(padded.buffer).setUint32(padded.length - 8, bytes.length * 8, true);
  const view = new DataView(padded.buffer);
  const h = Int32Array.of(0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476);
  for (let at = 0; at < padded.length; at += 64) {
    let [a, b, c, d] = h;
    for (let i = 0; i < 64; i++) {
      let f, g;
      if (i < 16) [f, g] = [(b & c) | (~b & d), i];
      else if (i < 32) [f, g] = [(d & b) | (~d & c), (5 * i + 1) % 16];
      else if (i < 48) [f, g] = [b ^ c ^ d, (3 * i + 5) % 16];
      else [f, g] = [c ^ (b | ~d), (7 * i) % 16];
      const s = S[(i >> 4) * 4 + (i & 3)];
      const t = (a + f + K[i] + view.getInt32(at + g * 4, true)) | 0;
      [a, d, c] = [d, c, b];
      b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
  }
  return new Uint8Array(h.buffer);
}

// GEAR[i] = the first 8 bytes, big-endian, of MD5 of 64 bytes of value i (the crate's
// examples/table64.rs); GEAR_LS[i] = GEAR[i] << 1 (examples/table64ls.rs). Seed 0 leaves
// both as they are. Each is split into high and low int32 halves.
const GEAR_HI = new Int32Array(256);
const GEAR_LO = new Int32Array(256);
const GEAR_LS_HI = new Int32Array(256);
const GEAR_LS_LO = new Int32Array(256);
for (let i = 0; i < 256; i++) {
  const digest = new DataView(md5(new Uint8Array(64).fill(i)).buffer);
  const hi = digest.getInt32(0, false);
  const lo = digest.getInt32(4, false);
  GEAR_HI[i] = hi;
  GEAR_LO[i] = lo;
  GEAR_LS_HI[i] = (hi << 1) | (lo >>> 31);
  GEAR_LS_LO[i] = lo << 1;
}

/** The gear table entry for byte `i` as 16 hex digits (for tests). */
export function gearHex(i, shifted = false) {
  const [hi, lo] = shifted ? [GEAR_LS_HI[i], GEAR_LS_LO[i]] : [GEAR_HI[i], GEAR_LO[i]];
  return [hi, lo].map((w) => (w >>> 0).toString(16).padStart(8, '0')).join('');
}

/** Hash carried between the two loops of one cut: [high, low]. */
const hash = new Int32Array(2);

/**
 * One loop of `cut_gear`: for steps `from..to`, two bytes per step, returns the cut (chunk
 * length) at the first position where the hash has none of the mask bits, or -1.
 */
function scan(src, from, to, maskHi, maskLo) {
  // mask << 1 for the first byte of each step, whose gear value was shifted one bit further.
  const lsHi = (maskHi << 1) | (maskLo >>> 31);
  const lsLo = maskLo << 1;
  let hi = hash[0];
  let lo = hash[1];
  for (let i = from; i < to; i++) {
    const a = i * 2;
    // hash = (hash << 2) + GEAR_LS[src[a]]; a carry out of the low half goes to the high half.
    hi = (hi << 2) | (lo >>> 30);
    lo <<= 2;
    let g = GEAR_LS_LO[src[a]];
    let s = (lo + g) | 0;
    hi = (hi + GEAR_LS_HI[src[a]] + (((lo & g) | ((lo | g) & ~s)) >>> 31)) | 0;
    lo = s;
    if ((hi & lsHi) === 0 && (lo & lsLo) === 0) return a;
    // hash = hash + GEAR[src[a + 1]]
    g = GEAR_LO[src[a + 1]];
    s = (lo + g) | 0;
    hi = (hi + GEAR_HI[src[a + 1]] + (((lo & g) | ((lo | g) & ~s)) >>> 31)) | 0;
    lo = s;
    if ((hi & maskHi) === 0 && (lo & maskLo) === 0) return a + 1;
  }
  hash[0] = hi;
  hash[1] = lo;
  return -1;
}

/** The cut function of one FastCDC 2020 configuration. */
export class Cutter {
  /** `params` = { min, avg, max } in bytes, as `GET /v1/config` gives them. */
  constructor({ min, avg, max }) {
    for (const [what, v] of Object.entries({ min, avg, max })) {
      const [lo, hi] = BOUNDS[what];
      if (!Number.isInteger(v) || v < lo || v > hi) {
        throw new RangeError(`${what} chunk size ${v} is outside ${lo}..=${hi} bytes`);
      }
    }
    if (!(min < avg && avg < max)) {
      throw new RangeError(`chunk sizes must satisfy min < avg < max, got ${min}/${avg}/${max}`);
    }
    Object.assign(this, { min, avg, max });
    // Normalization level 1: a harder mask (one bit more) before `avg`, an easier one after.
    const bits = Math.round(Math.log2(avg));
    [this.maskSHi, this.maskSLo] = MASKS[bits + 1 - MASKS_FIRST];
    [this.maskLHi, this.maskLLo] = MASKS[bits - 1 - MASKS_FIRST];
  }

  /**
   * Length of the chunk that starts at `data[0]`, or 0 if that is not known yet: a cut is
   * final only when `data` holds at least `max` bytes or reaches the end of the stream
   * (`atEnd`), the same rule as `next_len` in src/chunker.rs.
   */
  nextLen(data, atEnd) {
    if (data.length === 0 || (!atEnd && data.length < this.max)) return 0;
    return this.cut(data);
  }

  /** `cut_gear` on `data` (at most `max` bytes of it are looked at). */
  cut(data) {
    let remaining = data.length;
    if (remaining <= this.min) return remaining;
    let center = this.avg;
    if (remaining > this.max) remaining = this.max;
    else if (remaining < center) center = remaining;
    hash[0] = 0;
    hash[1] = 0;
    const from = this.min >>> 1;
    let cut = scan(data, from, center >>> 1, this.maskSHi, this.maskSLo);
    if (cut < 0) cut = scan(data, Math.max(from, center >>> 1), remaining >>> 1, this.maskLHi, this.maskLLo);
    // No cut point (e.g. all zeroes): the largest chunk allowed.
    return cut < 0 ? remaining : cut;
  }

  /** All chunk lengths of a whole in-memory buffer. */
  lengths(data) {
    const out = [];
    for (let pos = 0; pos < data.length; ) {
      const len = this.cut(data.subarray(pos));
      out.push(len);
      pos += len;
    }
    return out;
  }
}

/**
 * Cuts a stream given in pieces of any size into the same chunks as the whole stream. Holds
 * back fewer than `max` bytes (the unfinished tail) between pieces, and copies that tail in
 * front of the next piece: pieces of several MiB keep the copying small.
 */
export class ChunkStream {
  constructor(params) {
    this.cutter = new Cutter(params);
    this.tail = new Uint8Array(0);
    /** Stream offset of the first byte of `tail`. */
    this.offset = 0;
  }

  /**
   * Takes the next piece of the stream (`atEnd` on the last one, which may be empty) and
   * yields `{ offset, bytes }` for each chunk that is now final. `bytes` is a view into the
   * piece or an internal buffer: use it before the next `push`.
   */
  *push(piece, atEnd = false) {
    let buf = piece;
    if (this.tail.length > 0) {
      buf = new Uint8Array(this.tail.length + piece.length);
      buf.set(this.tail);
      buf.set(piece, this.tail.length);
    }
    let pos = 0;
    for (;;) {
      const len = this.cutter.nextLen(buf.subarray(pos), atEnd);
      if (len === 0) break;
      yield { offset: this.offset, bytes: buf.subarray(pos, pos + len) };
      pos += len;
      this.offset += len;
    }
    this.tail = buf.slice(pos); // a copy, so the piece itself can be freed
  }
}
