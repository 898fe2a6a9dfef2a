// Page logic of hoard's browser page (main thread): the token, the list of stored files, and
// uploads that send only the chunks the server lacks (cutting and hashing run in worker.js).
//
// Per file: the worker cuts and hashes it → POST v1/uploads (binary manifest) → POST v1/chunks,
// batches of the missing chunks sliced from the File → POST v1/uploads/SID/complete (409: send
// what it names, complete again). Choosing a file again after a reload or a failure resumes: the
// new session lacks only what never arrived. URLs are relative, so the page also works behind a
// path prefix.

import { toHex } from './blake3.js';

const SLICE = 8 << 20; // bytes the worker reads at a time
const BATCH = 4 << 20; // target body of one chunk batch
const IN_FLIGHT = 4; // chunk batches in flight per file
const FILES_AT_ONCE = 2; // files hashed or uploaded at the same time
const ATTEMPTS = 5; // per request, on network errors, 408, 429 and 5xx other than 507
const FRAME_HEADER = 41; // id[32] codec[1] raw_len[4] payload_len[4]
const REF_LEN = 36; // id[32] len[4] in a binary manifest
const BINARY = { 'Content-Type': 'application/octet-stream' };

const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- token and API calls ----

const tokenInput = $('#token');
tokenInput.value = storage('get') ?? '';

/** localStorage, which may be unavailable (private modes): then the token lasts the page. */
function storage(op, value) {
  try {
    if (op === 'get') return localStorage.getItem('hoard.token');
    if (value) localStorage.setItem('hoard.token', value);
    else localStorage.removeItem('hoard.token');
  } catch {
    return null;
  }
}

function authHeaders() {
  const token = tokenInput.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** An error answer of the API (`{"error", "message"}`), or `status` 0 for a network failure. */
class ApiError extends Error {
  constructor(status, code, message, body = null) {
    super(message);
    Object.assign(this, { status, code, body });
  }
}

/**
 * `fetch` with the token; retries network errors and transient statuses with backoff
 * (0.5 s, 1 s, 2 s, ...), awaiting `before()` (a pause) before each attempt. Returns the
 * response if it is 2xx, throws an ApiError otherwise.
 */
async function api(url, { method = 'GET', headers = {}, body, retry = true, before, signal } = {}) {
  for (let attempt = 1; ; attempt++) {
    if (before) await before();
    let resp;
    try {
      resp = await fetch(url, { method, body, signal, headers: { ...authHeaders(), ...headers } });
    } catch (err) {
      if (signal?.aborted) throw err; // cancelled on purpose (a pause): not a failure
      if (!retry || attempt >= ATTEMPTS) {
        throw new ApiError(0, 'network', `cannot reach the server (${err.message})`);
      }
      await sleep(250 * 2 ** attempt);
      continue;
    }
    if (resp.ok) return resp;
    const s = resp.status;
    const transient = s === 408 || s === 429 || (s >= 500 && s !== 507);
    if (!retry || !transient || attempt >= ATTEMPTS) throw await errorOf(resp);
    await sleep(250 * 2 ** attempt);
  }
}

async function errorOf(resp) {
  const body = await resp.json().catch(() => null);
  let message = body?.message ?? `${resp.status} ${resp.statusText}`;
  if (resp.status === 401) {
    message = tokenInput.value.trim()
      ? 'The server does not accept this token: check the Token field.'
      : 'This server needs a token: enter it in the Token field at the top.';
    notice(message);
  } else if (resp.status === 403) {
    message = 'This token may only read: uploading and deleting need a write token.';
  }
  return new ApiError(resp.status, body?.error ?? 'http', message, body);
}

/** Shows (or with '' hides) the page-wide message. */
function notice(text) {
  const el = $('#notice');
  el.textContent = text;
  el.hidden = !text;
}

let configPromise = null;
/** `GET v1/config` once: `{ chunker: { min, avg, max }, max_body, ... }`. */
function config() {
  configPromise ??= api('v1/config').then((r) => r.json());
  configPromise.catch(() => (configPromise = null)); // ask again next time
  return configPromise;
}

/** Whether reads need a token: then download links cannot work as plain links. */
const readsNeedToken = fetch('v1/config').then((r) => r.status === 401, () => false);

/** `v1/files/NAME` with each path segment escaped. */
const fileUrl = (spec) => 'v1/files/' + spec.split('/').map(encodeURIComponent).join('/');

// ---- formatting ----

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${units[i]}`;
}

function fmtDuration(s) {
  if (!isFinite(s)) return '';
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children.filter((c) => c != null));
  return e;
}

// ---- stored files ----

let refreshTimer = 0;
/** Refreshes the list soon, once for several calls. */
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 200);
}

async function refresh() {
  try {
    const [list, stats] = await Promise.all([
      api('v1/files').then((r) => r.json()),
      api('v1/stats').then((r) => r.json()),
    ]);
    renderFiles(list.files, stats, await readsNeedToken);
  } catch (e) {
    notice(e.message);
  }
}

function renderFiles(files, stats, needToken) {
  const ratio = (x) => `${x.toFixed(2)}×`;
  $('#summary').textContent = files.length
    ? `${stats.files} file${stats.files === 1 ? '' : 's'}, ${fmtBytes(stats.logical_bytes)} in all, ` +
      `${fmtBytes(stats.stored_bytes)} on disk: ${ratio(stats.overall_ratio)} overall ` +
      `(${ratio(stats.dedup_ratio)} from dedup, ${ratio(stats.compression_ratio)} from compression).`
    : 'Nothing stored yet.';
  const unique = new Map(stats.per_file.map((f) => [f.id, f.unique_bytes]));
  // Reads and writes open (no tokens), or a token given: offer deletion (a 401/403 says why not).
  const canDelete = !!tokenInput.value.trim() || !needToken;
  const date = (iso) => el('time', { dateTime: iso, textContent: new Date(iso).toLocaleString() });
  const cell = (label, ...content) => {
    const td = el('td', {}, ...content);
    td.dataset.label = label; // shown before the value on a phone (style.css)
    return td;
  };
  const rows = files.map((f) => {
    const spec = f.name ?? f.id;
    const label = f.name ?? `(no name) ${f.id.slice(0, 16)}…`;
    const actions = el('div', { className: 'actions' }, downloadLink(spec, 'Download', needToken, label));
    if (canDelete) {
      const del = el('button', { className: 'delete', type: 'button', textContent: 'Delete' });
      del.addEventListener('click', () => remove(spec, label));
      del.setAttribute('aria-label', `Delete ${label}`);
      actions.append(del);
    }
    if (f.versions.length > 1) {
      // Older versions after the newest's link, so the first link of a row is always the newest.
      actions.append(el('details', {}, el('summary', { textContent: 'Versions' }),
        el('ul', {}, ...f.versions.map((v) => el('li', {},
          downloadLink(`${f.name}@${v.version}`, `@${v.version}`, needToken, `${f.name}@${v.version}`),
          ` ${fmtBytes(v.size)}, `, date(v.added))))));
    }
    const tr = el('tr', { className: 'file' },
      cell('Name', el('span', { className: 'name', textContent: label, title: f.id })),
      cell('Size', fmtBytes(f.size)),
      cell('Versions', String(f.versions.length || '–')),
      cell('Added', f.added ? date(f.added) : '–'),
      cell('Only in it', unique.has(f.id) ? fmtBytes(unique.get(f.id)) : '–'),
      cell('', actions));
    tr.dataset.name = spec;
    return tr;
  });
  $('#files').replaceChildren(...rows);
}

/**
 * A plain `<a download>` (the browser's download manager, resumable), unless reads need a
 * token: a link cannot send a header, so then the file is fetched and saved from memory.
 */
function downloadLink(spec, text, needToken, label) {
  const a = el('a', { href: fileUrl(spec), textContent: text, download: spec.split('/').pop() });
  a.setAttribute('aria-label', `Download ${label}`);
  if (needToken) {
    a.addEventListener('click', async (e) => {
      e.preventDefault();
      try {
        const blob = await (await api(a.href, { retry: false })).blob();
        const save = el('a', { href: URL.createObjectURL(blob), download: a.download });
        save.click();
        setTimeout(() => URL.revokeObjectURL(save.href), 60_000);
      } catch (err) {
        notice(`Cannot download ${spec}: ${err.message}`);
      }
    });
  }
  return a;
}

async function remove(spec, label) {
  if (!confirm(`Delete ${label} and all its versions? Its chunks are freed by the next gc.`)) return;
  try {
    await api(fileUrl(spec), { method: 'DELETE', retry: false });
  } catch (e) {
    notice(`Cannot delete ${label}: ${e.message}`);
  }
  refresh();
}

// ---- uploads ----

const queue = [];
let running = 0;

function enqueue(upload) {
  queue.push(upload);
  pump();
}

function pump() {
  while (running < FILES_AT_ONCE && queue.length) {
    const u = queue.shift();
    running++;
    u.run().finally(() => {
      running--;
      pump();
    });
  }
}

/** One file's upload and its row in `#uploads`. */
class Upload {
  constructor(file) {
    this.file = file;
    this.name = file.name;
    this.hashed = 0; // bytes cut and hashed
    this.skipped = 0; // bytes the server already holds (file size minus missing bytes)
    this.missing = 0; // bytes of the distinct chunks to send
    this.uploaded = 0; // of those, bytes the server has acknowledged
    this.sent = 0; // request body bytes of chunk batches
    this.paused = false;
    this.inFlight = new Set(); // AbortControllers of the chunk batches being sent
    this.speed = { at: 0, bytes: 0, rate: 0 };
    this.row = el('li', { className: 'upload' },
      el('div', { className: 'upload-head' },
        el('span', { className: 'name', textContent: this.name }),
        el('span', { className: 'size', textContent: fmtBytes(file.size) })),
      this.bar = el('progress', { max: 1, value: 0 }),
      this.status = el('p', { className: 'status' }),
      this.detail = el('p', { className: 'detail' }),
      el('div', { className: 'buttons' },
        this.pauseButton = el('button', { className: 'pause', type: 'button', textContent: 'Pause', onclick: () => this.pause() }),
        this.resumeButton = el('button', { className: 'resume', type: 'button', textContent: 'Resume', hidden: true, onclick: () => this.resume() })));
    this.bar.setAttribute('aria-label', `Progress of ${this.name}`);
    this.status.setAttribute('aria-live', 'polite');
    this.row.dataset.name = this.name;
    this.setState('queued');
    $('#uploads').append(this.row);
  }

  async run() {
    try {
      const cfg = await config();
      this.hash ??= await this.hashFile(cfg.chunker);
      const manifestLen = 16 + this.hash.refs.byteLength + 48;
      if (manifestLen > cfg.max_body) {
        throw new Error(`its manifest (${fmtBytes(manifestLen)}) is over the server's body limit (${fmtBytes(cfg.max_body)})`);
      }
      const done = await this.upload(cfg);
      Object.assign(this.row.dataset, { fileId: done.file_id, bytesSent: this.sent, bytesSkipped: this.skipped });
      this.setState('complete');
      refreshSoon();
    } catch (e) {
      this.error = e.status === 422
        ? `${e.message} (did the file change after it was read? select it again)`
        : e.message;
      this.setState('failed');
    }
  }

  /** Cuts and hashes the file in a worker: `{ fileId, size, count, refs }`. */
  hashFile(params) {
    this.setState('hashing');
    return new Promise((resolve, reject) => {
      const worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
      this.worker = worker;
      const end = () => {
        worker.terminate();
        this.worker = null;
      };
      worker.onmessage = ({ data }) => {
        if (data.type === 'progress') {
          this.hashed = data.hashed;
          this.render();
        } else if (data.type === 'done') {
          end();
          resolve(data);
        } else {
          end();
          reject(new Error(`cannot read the file: ${data.message}`));
        }
      };
      worker.onerror = (e) => {
        end();
        reject(new Error(`the hashing worker failed: ${e.message}`));
      };
      worker.postMessage({ type: 'start', file: this.file, params, sliceSize: SLICE });
      if (this.paused) worker.postMessage({ type: 'pause' });
    });
  }

  /** Opens a session, sends what is missing, completes; returns the completed session. */
  async upload(cfg) {
    const { fileId, size, count, refs } = this.hash;
    const { min, avg, max } = cfg.chunker;
    const head = new Uint8Array(16);
    head.set([0x48, 0x4d, 0x46, 0x31]); // "HMF1"
    const tail = new Uint8Array(48);
    const hv = new DataView(head.buffer);
    const tv = new DataView(tail.buffer);
    [min, avg, max].forEach((v, i) => hv.setUint32(4 + 4 * i, v, true));
    tv.setBigUint64(0, BigInt(count), true);
    tv.setBigUint64(8, BigInt(size), true);
    tail.set(fileId.match(/../g).map((h) => parseInt(h, 16)), 16);
    const gate = () => this.gate();
    for (let opened = 1; ; opened++) {
      this.setState('uploading');
      const resp = await api(`v1/uploads?name=${encodeURIComponent(this.name)}`, {
        method: 'POST', headers: BINARY, body: new Blob([head, refs, tail]), before: gate,
      });
      const sid = resp.headers.get('hoard-session');
      const packed = new Uint8Array(await resp.arrayBuffer());
      if (opened === 1) {
        // What this run must send; a session reopened after expiry lacks only what is left.
        this.missing = Number(resp.headers.get('hoard-missing-bytes') ?? 0);
        this.skipped = size - this.missing;
        this.uploaded = 0;
      }
      const wanted = new Set();
      for (let i = 0; i < packed.length; i += 32) wanted.add(toHex(packed.subarray(i, i + 32)));
      try {
        await this.send(sid, wanted, cfg);
        for (let round = 1; ; round++) {
          this.setState('completing');
          try {
            const r = await api(`v1/uploads/${sid}/complete`, { method: 'POST', before: gate });
            return await r.json();
          } catch (e) {
            // 409: chunks still missing (e.g. lost by the server): send them, complete again.
            if (e.status !== 409 || round >= 3 || !e.body?.missing) throw e;
            this.setState('uploading');
            await this.send(sid, new Set(e.body.missing), cfg);
          }
        }
      } catch (e) {
        // 404/410: the session expired or was forgotten; open a new one (chunks sent stay).
        if ((e.status !== 404 && e.status !== 410) || opened >= 2) throw e;
      }
    }
  }

  /** Sends the chunks whose hex ids are in `wanted`, in batches, IN_FLIGHT at a time. */
  async send(sid, wanted, cfg) {
    if (wanted.size === 0) return;
    const limit = Math.min(BATCH, cfg.max_body);
    const batches = [];
    let batch = [];
    let bytes = 0;
    for (const c of this.locate(wanted)) {
      if (batch.length && bytes + FRAME_HEADER + c.len > limit) {
        batches.push(batch);
        [batch, bytes] = [[], 0];
      }
      batch.push(c);
      bytes += FRAME_HEADER + c.len;
    }
    batches.push(batch);
    let next = 0;
    let failed = false;
    const lane = async () => {
      while (next < batches.length && !failed) {
        try {
          await this.sendBatch(sid, batches[next++]);
        } catch (e) {
          failed = true;
          throw e;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, batches.length) }, lane));
  }

  /** `[{ id, offset, len }]` of the first occurrence in the file of each wanted id, in order. */
  locate(wanted) {
    const refs = new Uint8Array(this.hash.refs);
    const view = new DataView(this.hash.refs);
    const left = new Set(wanted);
    const found = [];
    for (let i = 0, offset = 0; i < this.hash.count && left.size; i++) {
      const id = refs.subarray(i * REF_LEN, i * REF_LEN + 32);
      const len = view.getUint32(i * REF_LEN + 32, true);
      if (left.delete(toHex(id))) found.push({ id, offset, len });
      offset += len;
    }
    if (left.size) throw new Error(`the server asked for ${left.size} chunks this file does not have`);
    return found;
  }

  /**
   * Posts the chunks as frames. The body is a Blob of 41-byte frame headers and slices of the
   * File itself: the browser streams the bytes from disk, none pass through this page's memory.
   */
  async sendBatch(sid, chunks) {
    const parts = [];
    let size = 0;
    for (const c of chunks) {
      const header = new Uint8Array(FRAME_HEADER);
      const view = new DataView(header.buffer);
      header.set(c.id); // byte 32, the codec, stays 0: raw
      view.setUint32(33, c.len, true); // raw_len
      view.setUint32(37, c.len, true); // payload_len
      parts.push(header, this.file.slice(c.offset, c.offset + c.len));
      size += FRAME_HEADER + c.len;
    }
    const body = new Blob(parts);
    for (;;) {
      // A pause aborts the batches in flight (so it takes effect at once); they go again on resume.
      const abort = new AbortController();
      this.inFlight.add(abort);
      try {
        await api(`v1/chunks?session=${encodeURIComponent(sid)}`, {
          method: 'POST', headers: BINARY, body, before: () => this.gate(), signal: abort.signal,
        }).then((r) => r.json());
        break;
      } catch (e) {
        if (abort.signal.aborted) continue;
        // A File that changed on disk since it was hashed can no longer be read: say so.
        const readable = await this.file.slice(0, 1).arrayBuffer().then(() => true, () => false);
        if (e.status === 0 && !readable) throw new Error('the file changed since it was read; select it again');
        throw e;
      } finally {
        this.inFlight.delete(abort);
      }
    }
    this.sent += size;
    this.uploaded += size - FRAME_HEADER * chunks.length;
    this.render();
  }

  /** Resolves when not paused (every lane waits on the same promise). */
  async gate() {
    while (this.paused) await this.resumed;
  }

  pause() {
    if (!this.paused) this.resumed = new Promise((resolve) => (this.wake = resolve));
    this.paused = true;
    this.worker?.postMessage({ type: 'pause' });
    for (const abort of this.inFlight) abort.abort();
    this.render();
  }

  resume() {
    this.paused = false;
    this.worker?.postMessage({ type: 'resume' });
    this.wake?.();
    if (this.state === 'failed') {
      this.error = null;
      this.setState('queued');
      enqueue(this); // again from the session: what the server got is not sent twice
    }
    this.render();
  }

  setState(state) {
    this.state = state;
    this.row.dataset.state = state;
    this.speed = { at: performance.now(), bytes: this.progressBytes(), rate: 0 };
    this.render();
  }

  /** Bytes done in the current phase, and the phase's total. */
  progressBytes() {
    return this.state === 'hashing' ? this.hashed : this.uploaded;
  }

  progressTotal() {
    return this.state === 'hashing' ? this.file.size : Math.max(this.missing, this.uploaded);
  }

  /** Updates the row (text, bar, buttons); the speed is smoothed over about two seconds. */
  render() {
    const now = performance.now();
    const s = this.speed;
    const done = this.progressBytes();
    if (now - s.at > 500) {
      const rate = ((done - s.bytes) * 1000) / (now - s.at);
      s.rate = s.rate ? 0.7 * s.rate + 0.3 * rate : rate;
      Object.assign(s, { at: now, bytes: done });
    }
    const total = this.progressTotal();
    const share = total ? done / total : 1;
    const active = ['hashing', 'uploading', 'completing'].includes(this.state);
    const paused = this.paused && active;
    let text = {
      queued: 'Waiting',
      completing: 'Checking the whole file on the server…',
      complete: `Done: ${this.row.dataset.fileId ?? ''}`,
      failed: `Failed: ${this.error}`,
    }[this.state];
    if (this.state === 'hashing' || this.state === 'uploading') {
      const left = s.rate > 0 ? `, ${fmtDuration((total - done) / s.rate)} left` : '';
      text = `${this.state === 'hashing' ? 'Reading and hashing' : 'Uploading'} ${(100 * share).toFixed(0)}%` +
        (s.rate > 0 && !paused ? ` at ${fmtBytes(Math.round(s.rate))}/s${left}` : '');
    }
    this.status.textContent = paused ? `Paused (${text.toLowerCase()})` : text;
    this.bar.value = this.state === 'complete' ? 1 : this.state === 'hashing' ? share / 2 : 0.5 + share / 2;
    this.detail.textContent = `hashed ${fmtBytes(this.hashed)} of ${fmtBytes(this.file.size)}` +
      (this.state === 'hashing' || this.state === 'queued' ? '' :
        `, already stored ${fmtBytes(this.skipped)}, sent ${fmtBytes(this.sent)}`);
    this.pauseButton.hidden = !active || this.paused;
    this.resumeButton.hidden = !(paused || this.state === 'failed');
    this.resumeButton.textContent = this.state === 'failed' ? 'Retry' : 'Resume';
    this.row.dataset.bytesSent = this.sent;
    this.row.dataset.bytesSkipped = this.skipped;
  }
}

// ---- wiring ----

function addFiles(files) {
  for (const file of files) enqueue(new Upload(file));
}

$('#file-input').addEventListener('change', (e) => {
  addFiles(e.target.files);
  e.target.value = ''; // choosing the same file again (to resume) fires `change` again
});

const zone = $('#drop-zone');
zone.addEventListener('dragover', (e) => {
  e.preventDefault();
  zone.classList.add('over');
});
zone.addEventListener('dragleave', () => zone.classList.remove('over'));
zone.addEventListener('drop', (e) => {
  e.preventDefault();
  zone.classList.remove('over');
  // Folders cannot be read as files: leave them out, and say so.
  const items = [...e.dataTransfer.items].filter((i) => i.kind === 'file');
  const folders = items.filter((i) => i.webkitGetAsEntry?.()?.isDirectory);
  if (folders.length) notice('Folders are not uploaded: drop the files in them instead.');
  addFiles(items.filter((i) => !folders.includes(i)).map((i) => i.getAsFile()).filter(Boolean));
});
// A file dropped beside the zone must not replace the page.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());

$('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  storage('set', tokenInput.value.trim());
  notice('');
  configPromise = null;
  refresh();
});

// The command-line hint names this server.
for (const s of document.querySelectorAll('.server-url')) s.textContent = new URL('.', location.href).href.replace(/\/$/, '');

refresh();
