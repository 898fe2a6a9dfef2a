// Checks the browser page's FastCDC and BLAKE3 (src/web/fastcdc.js, src/web/blake3.js) against the Rust
// side's golden files in fixtures/: the page must cut and hash exactly as the server does, or
// its uploads would stop deduplicating. Run with `node --test tests/js/` (Node 20, no packages).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { Cutter, ChunkStream, gearHex } from '../../src/web/fastcdc.js';
import { Blake3, blake3Hex } from '../../src/web/blake3.js';

const fixture = (name) => readFileSync(new URL(`../../fixtures/${name}`, import.meta.url));
const data = new Uint8Array(fixture('mixed.bin'));

/** Lines of a fixture without its `#` comments: [header comment, lines]. */
function lines(name) {
  const all = fixture(name).toString('utf8').split('\n');
  return [all.find((l) => l.startsWith('#')) ?? '', all.filter((l) => l.trim() && !l.startsWith('#'))];
}

/** The params and chunk lengths of a `.cuts` file (its comment ends in "min/avg/max A/B/C"). */
function cuts(name) {
  const [comment, rows] = lines(name);
  const [min, avg, max] = comment.match(/(\d+)\/(\d+)\/(\d+)\s*$/).slice(1).map(Number);
  return { params: { min, avg, max }, lens: rows.map(Number) };
}

/** Chunk lengths from a ChunkStream fed `data` in pieces whose sizes cycle through `sizes`. */
function streamed(params, sizes) {
  const stream = new ChunkStream(params);
  const out = [];
  let offset = 0;
  for (let at = 0, i = 0; at < data.length; i++) {
    const piece = data.subarray(at, at + sizes[i % sizes.length]);
    at += piece.length;
    for (const c of stream.push(piece, at >= data.length)) {
      assert.equal(c.offset, offset, 'chunks come in order, back to back');
      offset += c.bytes.length;
      out.push(c.bytes.length);
    }
  }
  return out;
}

const CUT_FILES = ['mixed.16k-64k-256k.cuts', 'mixed.1k-4k-16k.cuts'];

test('gear tables are the fastcdc crate\'s (first and last entries)', () => {
  assert.equal(gearHex(0), '3b5d3c7d207e37dc');
  assert.equal(gearHex(255), 'aabd2b2a451504e1');
  assert.equal(gearHex(0, true), '76ba78fa40fc6fb8');
});

for (const file of CUT_FILES) {
  test(`cut points of the whole buffer match ${file}`, () => {
    const { params, lens } = cuts(file);
    assert.equal(lens.reduce((a, b) => a + b, 0), data.length, 'the list covers the fixture');
    assert.deepEqual(new Cutter(params).lengths(data), lens);
  });

  test(`cut points of a stream in odd slices match ${file}`, () => {
    const { params, lens } = cuts(file);
    // Small and odd sizes, sizes around `max`, and one slice as big as the worker's.
    const sizes = [[1, 997, 4093, 2], [65537, 7], [params.max - 1, params.max + 1, 1], [1_000_003], [8 << 20]];
    for (const s of sizes) assert.deepEqual(streamed(params, s), lens, `slice sizes ${s}`);
  });
}

test('a final empty push ends the stream, and an empty stream has no chunks', () => {
  const { params, lens } = cuts(CUT_FILES[0]);
  const stream = new ChunkStream(params);
  const got = [...stream.push(data)].map((c) => c.bytes.length);
  got.push(...[...stream.push(new Uint8Array(0), true)].map((c) => c.bytes.length));
  assert.deepEqual(got, lens);
  assert.deepEqual([...new ChunkStream(params).push(new Uint8Array(0), true)], []);
});

test('out-of-range params are refused with a message', () => {
  assert.throws(() => new Cutter({ min: 32, avg: 4096, max: 16384 }), /min chunk size 32 is outside/);
  assert.throws(() => new Cutter({ min: 4096, avg: 4096, max: 16384 }), /min < avg < max/);
});

test('BLAKE3 of the whole fixture is its file id (mixed.b3)', () => {
  const expected = fixture('mixed.b3').toString('utf8').split(/\s+/)[0];
  assert.equal(blake3Hex(data), expected);
});

test('BLAKE3 of prefixes matches the blake3 crate (mixed.prefix.b3)', () => {
  const [, rows] = lines('mixed.prefix.b3');
  assert.ok(rows.length >= 20, `only ${rows.length} prefixes`);
  const hasher = new Blake3();
  for (const row of rows) {
    const [len, expected] = row.trim().split(/\s+/);
    const prefix = data.subarray(0, Number(len));
    assert.equal(blake3Hex(prefix), expected, `prefix of ${len} bytes`);
    // Incremental, in odd pieces, and from unaligned memory (the word-copy path).
    hasher.reset();
    for (let at = 0, step = 1; at < prefix.length; step = (step * 7 + 5) % 9001 + 1) {
      hasher.update(prefix.subarray(at, at + step));
      at += step;
    }
    assert.equal(hasher.hex(), expected, `prefix of ${len} bytes, incremental`);
    const unaligned = new Uint8Array(prefix.length + 3);
    unaligned.set(prefix, 3);
    assert.equal(blake3Hex(unaligned.subarray(3)), expected, `prefix of ${len} bytes, unaligned`);
  }
});

// Chunk ids from the blake3 crate (via its Python binding) for the first chunks of mixed.bin.
const FIRST_CHUNK_IDS = {
  'mixed.16k-64k-256k.cuts': [
    '8846afaf514a1136a0cbc7c4194a5f5838b567260be70625dd11cbf13e57e57b',
    '3e17a97e7e7213e241ed6283a9a712b23532bdcf3c241ed853fc0c0468f88e9a',
    'c0935c5f6e49aa53b0dffacc04a27d4bbb19065feb0772f02a243a4f7678ada7',
    '9021cdb27e301d695a1720b42d86f5674668a3de61562c7df015913e4477a0a4',
  ],
  'mixed.1k-4k-16k.cuts': [
    '0a6092ee498b7af079e1c97dbfba0e4d3892fc808640731c48edb60fa16ebdcc',
    'f01097b5ef90e6aff9a32b4b200d0711cbfb4a5c2ce92b09c75f293d4f3039ac',
    'b81d165c87937cae10f27df527a85b7406fa9222de28855728621fc4203e2d4c',
    '9a4bf34984faba482a64ed600dc87a9132910fad57ef4ef94b04486a0eca9e35',
  ],
};

for (const file of CUT_FILES) {
  test(`chunk ids of the first chunks (${file}), hashed as the stream is cut`, () => {
    const { params } = cuts(file);
    const stream = new ChunkStream(params);
    const hasher = new Blake3();
    const ids = [];
    for (let at = 0; at < data.length && ids.length < 4; at += 100_003) {
      const piece = data.subarray(at, at + 100_003);
      for (const c of stream.push(piece, at + piece.length >= data.length)) {
        ids.push(hasher.reset().update(c.bytes).hex());
      }
    }
    assert.deepEqual(ids.slice(0, 4), FIRST_CHUNK_IDS[file]);
  });
}

test('the worker turns a file into the manifest refs and the file id', async () => {
  // src/web/worker.js runs here with a stand-in for the worker global.
  const messages = [];
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  globalThis.self = {
    postMessage(msg) {
      messages.push(msg);
      if (msg.type !== 'progress') done(msg);
    },
  };
  await import('../../src/web/worker.js');
  const { params, lens } = cuts(CUT_FILES[1]);
  self.onmessage({ data: { type: 'start', file: new Blob([data]), params, sliceSize: 300_001 } });
  const msg = await finished;
  assert.equal(msg.type, 'done', msg.message);
  assert.equal(msg.fileId, fixture('mixed.b3').toString('utf8').split(/\s+/)[0]);
  assert.equal(msg.size, data.length);
  assert.equal(msg.count, lens.length);
  const refs = new Uint8Array(msg.refs);
  const view = new DataView(msg.refs);
  assert.equal(refs.length, lens.length * 36);
  assert.deepEqual(lens.map((_, i) => view.getUint32(i * 36 + 32, true)), lens);
  const firstId = Buffer.from(refs.subarray(0, 32)).toString('hex');
  assert.equal(firstId, FIRST_CHUNK_IDS[CUT_FILES[1]][0]);
  assert.ok(messages.some((m) => m.type === 'progress' && m.hashed === data.length));
});
