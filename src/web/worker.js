// Web Worker for the upload page: reads one File in slices, cuts it into FastCDC chunks and
// hashes every chunk (chunk ids) and the whole file (file id) with BLAKE3, off the main thread.
//
// In:  { type: 'start', file, params: { min, avg, max }, sliceSize }, then 'pause' / 'resume'.
// Out: { type: 'progress', hashed }                      after each slice
//      { type: 'done', fileId, size, count, refs }       refs: ArrayBuffer of count * 36 bytes,
//                                                        (id[32] len[4 LE]) per chunk, in file
//                                                        order: the body of a binary manifest
//      { type: 'error', message }
// Memory: two slices (one being hashed, the next being read), the tail of one chunk, and the refs.

import { ChunkStream } from './fastcdc.js';
import { Blake3 } from './blake3.js';

/** Bytes per chunk ref: id[32] len[4]. */
const REF_LEN = 36;

let paused = null; // a promise while paused, with its `resolve` as `paused.go`

self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === 'start') {
    hashFile(msg.file, msg.params, msg.sliceSize).catch((err) =>
      self.postMessage({ type: 'error', message: String(err?.message ?? err) }),
    );
  } else if (msg.type === 'pause' && !paused) {
    let go;
    paused = new Promise((resolve) => (go = resolve));
    paused.go = go;
  } else if (msg.type === 'resume' && paused) {
    paused.go();
    paused = null;
  }
};

async function hashFile(file, params, sliceSize) {
  const stream = new ChunkStream(params);
  const fileHash = new Blake3();
  const chunkHash = new Blake3();
  // Refs grow by doubling; ~1 per `avg` bytes.
  let refs = new Uint8Array(REF_LEN * Math.max(16, Math.ceil(file.size / params.avg) + 16));
  let view = new DataView(refs.buffer);
  let count = 0;
  const read = (at) => file.slice(at, Math.min(file.size, at + sliceSize)).arrayBuffer();
  let next = read(0);
  for (let at = 0; ; ) {
    if (paused) await paused;
    const slice = new Uint8Array(await next);
    if (slice.length === 0 && at < file.size) throw new Error('the file could not be read');
    const end = at + slice.length;
    const atEnd = end >= file.size;
    if (!atEnd) next = read(end); // read ahead while this slice is hashed
    for (const chunk of stream.push(slice, atEnd)) {
      fileHash.update(chunk.bytes);
      const id = chunkHash.reset().update(chunk.bytes).digest();
      if ((count + 1) * REF_LEN > refs.length) {
        const bigger = new Uint8Array(refs.length * 2);
        bigger.set(refs);
        refs = bigger;
        view = new DataView(refs.buffer);
      }
      refs.set(id, count * REF_LEN);
      view.setUint32(count * REF_LEN + 32, chunk.bytes.length, true);
      count++;
    }
    at = end;
    self.postMessage({ type: 'progress', hashed: at });
    if (atEnd) break;
  }
  const out = refs.slice(0, count * REF_LEN).buffer;
  self.postMessage(
    { type: 'done', fileId: fileHash.hex(), size: file.size, count, refs: out },
    [out],
  );
}
