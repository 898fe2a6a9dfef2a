// Browser tests of hoard's page and tus endpoint: Debian's chromium, headless, driven by
// playwright-core, against `hoard serve` on 127.0.0.1 (a real server, a real store).
//
// The page uploads a generated 100 MiB file, then an edited copy (bytes sent are read from the
// server's webhook events, not only from the page); both are downloaded through the page's own
// link and compared; an upload is paused, the page reloaded mid-upload, and the file chosen
// again finishes without sending again what already arrived. tus-js-client (npm), loaded by a
// page of another origin, uploads through CORS. Screenshots go to target/browser/ and must not
// be blank. Figures go to target/browser/report.json. Run by .ci/browser.sh.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const HOARD = process.env.HOARD_BIN ?? path.join(ROOT, 'target', 'debug', 'hoard');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// HOARD_BROWSER_STORE (s3://BUCKET/PREFIX) with HOARD_BROWSER_INDEX runs the same tests on a
// store in a bucket (.ci/browser.sh does, on engines of its own); figures then go to
// target/browser/remote/.
const REMOTE = process.env.HOARD_BROWSER_STORE;
// With HOARD_BROWSER_SERVERS=N (and a bucket store), N servers on it behind HAProxy, every
// request balanced on its own; figures then go to target/browser/cluster/.
const SERVERS = Number(process.env.HOARD_BROWSER_SERVERS ?? 1);
const OUT = path.join(ROOT, 'target', 'browser',
  ...(SERVERS > 1 ? ['cluster'] : REMOTE ? ['remote'] : []));
const TOKEN = 'browser-test-token';
const MIB = 1 << 20;
const SIZE = 100 * MIB;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'hoard-browser-'));
const report = {};
let server; // { url, proc }
let hooks; // { url, events }
let other; // { url }: a page of another origin
let browser;
const pageErrors = []; // uncaught exceptions in the page: each test checks there were none

// ---- data: deterministic, half random and half text-like, so chunks dedup and compress ----

function prng(seed) {
  let s = BigInt(seed) | 1n;
  return () => {
    s ^= s << 13n; s &= 0xffffffffffffffffn;
    s ^= s >> 7n;
    s ^= s << 17n; s &= 0xffffffffffffffffn;
    return Number(s & 0xffffffffn);
  };
}

function mixed(size, seed) {
  const next = prng(seed);
  const out = Buffer.alloc(size);
  const words = Array.from({ length: 256 }, () =>
    Buffer.from(Array.from({ length: 3 + (next() % 9) }, () => 97 + (next() % 26))));
  let at = 0;
  while (at < size) {
    const run = Math.min(65536, size - at);
    if (next() % 2) {
      for (let i = 0; i < run; i += 4) out.writeUInt32LE(next(), Math.min(i + at, size - 4));
    } else {
      let i = 0;
      while (i < run) {
        const w = words[next() % words.length];
        i += w.copy(out, at + i, 0, Math.min(w.length, run - i));
        if (i < run) out[at + i++] = 32;
      }
    }
    at += run;
  }
  return out;
}

/** `n` small edits: overwrites and insertions. */
function edit(data, n, seed) {
  const next = prng(seed);
  let out = Buffer.from(data);
  for (let k = 0; k < n; k++) {
    const at = next() % out.length;
    const patch = Buffer.from(Array.from({ length: 1 + (next() % 200) }, () => next() & 255));
    out = next() % 2
      ? Buffer.concat([out.subarray(0, at), patch, out.subarray(at)])
      : Buffer.concat([out.subarray(0, at), patch, out.subarray(Math.min(out.length, at + patch.length))]);
  }
  return out;
}

const sha256 = (b) => createHash('sha256').update(b).digest('hex');

function writeFile(name, data) {
  const p = path.join(work, name);
  fs.writeFileSync(p, data);
  return p;
}

// ---- the server and its webhook receiver ----

async function listen(handler) {
  const s = http.createServer(handler);
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return { server: s, url: `http://127.0.0.1:${s.address().port}` };
}

async function startHooks() {
  const events = [];
  const { server: s, url } = await listen((req, res) => {
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => {
      events.push(JSON.parse(Buffer.concat(parts).toString()));
      res.end('ok');
    });
  });
  return { server: s, url: `${url}/hook`, events };
}

/** Waits (at most `ms`) for a hook event that matches `want`. */
async function hookEvent(want, ms = 60000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const e = hooks.events.find(want);
    if (e) return e;
    if (Date.now() > deadline) throw new Error(`no such hook event in ${JSON.stringify(hooks.events)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The server the tests talk to: one, or SERVERS behind HAProxy ({ url, proc, ports }). */
async function startServer(corsOrigin) {
  if (SERVERS <= 1) return startOne(corsOrigin);
  const servers = [];
  for (let i = 0; i < SERVERS; i++) servers.push(await startOne(corsOrigin));
  const free = await listen(() => {});
  const port = free.server.address().port;
  free.server.close();
  const backends = servers.map((s, i) =>
    `  server s${i} ${s.url.replace('http://', '')} check inter 300ms fall 1 rise 1\n`).join('');
  const cfg = path.join(work, 'haproxy.cfg');
  fs.writeFileSync(cfg, 'defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n'
    + '  timeout server 120s\n  option http-server-close\n  retries 3\n  option redispatch\n'
    + `frontend in\n  bind 127.0.0.1:${port}\n  default_backend hoard\n`
    + `backend hoard\n  balance roundrobin\n  option httpchk GET /healthz\n${backends}`);
  const proxy = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'inherit'] });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20000;
  for (;;) {
    const up = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    if (up) break;
    if (Date.now() > deadline) throw new Error('the proxy did not answer');
    await new Promise((r) => setTimeout(r, 100));
  }
  const proc = { kill: (sig) => [proxy, ...servers.map((s) => s.proc)].forEach((p) => p.kill(sig)) };
  return { url, proc, servers };
}

async function startOne(corsOrigin) {
  const store = REMOTE
    ? ['--store', REMOTE, '--index', process.env.HOARD_BROWSER_INDEX]
    : ['--store', path.join(work, 'store')];
  const proc = spawn(HOARD, [
    ...store, 'serve', '--listen', '127.0.0.1:0',
    '--token', TOKEN, '--hook-url', hooks.url, '--cors-origin', corsOrigin,
  ], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } });
  // A server that cannot start (its store refused) exits instead of listening.
  const exited = once(proc, 'exit').then(([code]) => {
    throw new Error(`hoard serve exited with ${code} before listening`);
  });
  const [line] = await Promise.race([
    once(readline.createInterface({ input: proc.stdout }), 'line'),
    exited,
  ]);
  exited.catch(() => {});
  assert.match(line, /^listening on /);
  return { proc, url: line.replace('listening on ', '') };
}

async function api(p, init = {}) {
  const r = await fetch(`${server.url}${p}`, {
    ...init, headers: { Authorization: `Bearer ${TOKEN}`, ...(init.headers ?? {}) },
  });
  return r;
}

// ---- the page ----

async function openPage(viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${e.message}\n${e.stack}`));
  // (The page asks once without a token whether reads need one: that 401 is expected.)
  page.on('console', (m) => m.type() === 'error' && !/status of 401/.test(m.text())
    && console.error(`page console: ${m.text()}`));
  await page.goto(`${server.url}/`);
  await page.fill('#token', TOKEN);
  await page.press('#token', 'Enter');
  return page;
}

const row = (page, name) => page.locator(`#uploads .upload[data-name="${name}"]`);

/** Chooses `file` in the page and waits until its upload completes; returns the row's data. */
async function uploadThroughPage(page, file, name) {
  const before = await row(page, name).count();
  await page.setInputFiles('#file-input', file);
  const r = row(page, name).nth(before);
  await r.waitFor();
  await page.waitForFunction(
    ([n, i]) => {
      const e = [...document.querySelectorAll('#uploads .upload')].filter((x) => x.dataset.name === n)[i];
      return e && (e.dataset.state === 'complete' || e.dataset.state === 'failed');
    },
    [name, before], { timeout: 300000, polling: 100 });
  const data = await r.evaluate((e) => ({ ...e.dataset, text: e.textContent }));
  assert.equal(data.state, 'complete', `upload of ${name} failed: ${data.text}`);
  return data;
}

/** Screenshot to `file`; fails if it is blank (too few distinct colours). */
async function screenshot(page, file) {
  fs.mkdirSync(OUT, { recursive: true });
  const png = await page.screenshot({ path: path.join(OUT, file), fullPage: true });
  const colours = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width; c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < px.length; i += 4 * 7) seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
    return seen.size;
  }, png.toString('base64'));
  assert.ok(colours > 16, `${file} looks blank (${colours} colours)`);
  return colours;
}

before(async () => {
  hooks = await startHooks();
  // Another origin with a page that loads tus-js-client from npm.
  const tusJs = fs.readFileSync(path.join(ROOT, 'tests', 'browser', 'node_modules', 'tus-js-client', 'dist', 'tus.min.js'));
  other = await listen((req, res) => {
    if (req.url === '/tus.min.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      res.end(tusJs);
    } else {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<!doctype html><title>elsewhere</title><script src="/tus.min.js"></script>');
    }
  });
  server = await startServer(other.url);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

afterEach(() => {
  assert.deepEqual(pageErrors.splice(0), [], 'uncaught errors in the page');
});

after(async () => {
  await browser?.close();
  server?.proc.kill('SIGTERM');
  hooks?.server.close();
  other?.server.close();
  fs.mkdirSync(OUT, { recursive: true });
  fs.writeFileSync(path.join(OUT, 'report.json'), `${JSON.stringify(report, null, 1)}\n`);
  fs.rmSync(work, { recursive: true, force: true });
});

test('a 100 MiB file, then an edited copy that sends a small fraction, both downloaded back', async () => {
  const v1 = mixed(SIZE, 1);
  const v2 = edit(v1, 20, 2);
  const page = await openPage();

  let t = Date.now();
  const first = await uploadThroughPage(page, writeFile('disk.img', v1), 'disk.img');
  report.page_v1_seconds = (Date.now() - t) / 1000;
  const e1 = await hookEvent((e) => e.event === 'upload.complete' && e.file_id === first.fileId);
  assert.equal(e1.size, v1.length);
  assert.equal(e1.source, 'session');

  // The edited copy under the same name (a new file with the same path).
  fs.writeFileSync(path.join(work, 'disk.img'), v2);
  t = Date.now();
  const second = await uploadThroughPage(page, path.join(work, 'disk.img'), 'disk.img');
  report.page_v2_seconds = (Date.now() - t) / 1000;
  const e2 = await hookEvent((e) => e.event === 'upload.complete' && e.file_id === second.fileId);
  report.page_v2_size = v2.length;
  report.page_v2_bytes_sent_server = e2.bytes_sent;
  report.page_v2_bytes_sent_page = Number(second.bytesSent);
  report.page_v2_new_bytes = e2.new_bytes;
  assert.ok(e2.bytes_sent < v2.length * 0.05, `second upload sent ${e2.bytes_sent} of ${v2.length}`);
  assert.ok(Number(second.bytesSent) <= e2.bytes_sent * 1.01 + 4096);

  // The page with both uploads done (the README's picture).
  await page.waitForFunction(() => /^2 files/.test(document.querySelector('#summary')?.textContent ?? ''));
  await page.locator('#token').blur();
  report.desktop_screenshot_colours = await screenshot(page, 'page.png');

  // Downloads through the page's own links: the newest version, byte for byte.
  await page.reload();
  const link = page.getByRole('link', { name: 'Download disk.img', exact: true });
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const saved = path.join(work, 'downloaded.img');
  await download.saveAs(saved);
  assert.equal(sha256(fs.readFileSync(saved)), sha256(v2));
  const v1back = Buffer.from(await (await api('/v1/files/disk.img@1')).arrayBuffer());
  assert.equal(sha256(v1back), sha256(v1));
  await page.context().close();
});

test('pause, reload mid-upload, choose the file again: it finishes without sending twice', async () => {
  const data = mixed(96 * MIB, 7);
  const file = writeFile('resume.bin', data);
  const page = await openPage();
  // Slow the chunk uploads down so there is a "mid-upload" to interrupt.
  const chunkUploads = (url) => url.pathname.endsWith('/v1/chunks');
  await page.route(chunkUploads, async (route) => {
    await new Promise((r) => setTimeout(r, 2000));
    await route.continue();
  });
  await page.setInputFiles('#file-input', file);
  const r = row(page, 'resume.bin').last();
  await page.waitForFunction(() => {
    const e = document.querySelector('#uploads .upload[data-name="resume.bin"]');
    return e && Number(e.dataset.bytesSent ?? 0) > 0;
  }, null, { timeout: 120000, polling: 50 });
  // Pause: nothing more is sent.
  await r.locator('.pause').click();
  // Requests already in flight finish (each is held 2 s); then nothing more goes out.
  await new Promise((res) => setTimeout(res, 5000));
  const paused = Number(await r.getAttribute('data-bytes-sent'));
  await new Promise((res) => setTimeout(res, 3000));
  assert.equal(Number(await r.getAttribute('data-bytes-sent')), paused, 'bytes went out while paused');
  assert.ok(paused < data.length - 16 * MIB, `paused after ${paused} bytes`);
  // Reload in the middle, then choose the same file again.
  await page.unroute(chunkUploads);
  await page.reload();
  await page.fill('#token', TOKEN);
  await page.press('#token', 'Enter');
  const done = await uploadThroughPage(page, file, 'resume.bin');
  const sent = Number(done.bytesSent);
  report.resume_size = data.length;
  report.resume_sent_before_reload = paused;
  report.resume_sent_after_reload = sent;
  assert.ok(sent <= data.length - paused + 8 * MIB,
    `after the reload it sent ${sent} of ${data.length}, though ${paused} had arrived`);
  const back = Buffer.from(await (await api('/v1/files/resume.bin')).arrayBuffer());
  assert.equal(sha256(back), sha256(data));
  await page.context().close();
});

test('tus-js-client on a page of another origin uploads through CORS; the same bytes again store nothing', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${other.url}/`);
  const upload = (seed) => page.evaluate(async ({ endpoint, token, seed }) => {
    // 12 MiB of pseudo-random bytes made in the page.
    const bytes = new Uint8Array(12 << 20);
    let s = seed;
    for (let i = 0; i < bytes.length; i++) { s = (s * 1103515245 + 12345) >>> 0; bytes[i] = s >>> 24; }
    const file = new Blob([bytes]);
    return new Promise((resolve, reject) => {
      const up = new tus.Upload(file, {
        endpoint,
        headers: { Authorization: `Bearer ${token}` },
        metadata: { filename: 'from-tus-js.bin', filetype: 'application/octet-stream' },
        chunkSize: 5 << 20,
        retryDelays: [0, 500],
        onError: (e) => reject(new Error(String(e))),
        onSuccess: () => resolve(up.url),
      });
      up.start();
    });
  }, { endpoint: `${server.url}/v1/tus/`, token: TOKEN, seed });
  const url1 = await upload(1);
  assert.match(url1, /\/v1\/tus\/[0-9a-f]{32}$/);
  const id1 = url1.split('/').pop();
  const e1 = await hookEvent((e) => e.event === 'upload.complete' && e.upload === id1);
  assert.equal(e1.size, 12 << 20);
  assert.equal(e1.new_bytes, 12 << 20);
  const url2 = await upload(1);
  const e2 = await hookEvent((e) => e.event === 'upload.complete' && e.upload === url2.split('/').pop());
  assert.equal(e2.file_id, e1.file_id);
  assert.equal(e2.new_bytes, 0);
  assert.equal(e2.bytes_sent, 12 << 20, 'tus sends every byte');
  report.tus_js_second_upload = { bytes_sent: e2.bytes_sent, new_bytes: e2.new_bytes };
  await context.close();
});

test('a file pushed with the CLI, then dropped on the page with another one: only the new one is sent', async () => {
  const pushed = mixed(8 * MIB, 21);
  const fresh = mixed(3 * MIB, 22);
  const pushedPath = writeFile('pushed.bin', pushed);
  const push = spawn(HOARD, ['push', pushedPath, '--server', server.url, '--token', TOKEN, '--json'],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  const [code] = await once(push, 'exit');
  assert.equal(code, 0, 'hoard push failed');

  const page = await openPage();
  // Both files at once, by drag-and-drop onto the drop zone.
  const transfer = await page.evaluateHandle(([a, b]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([Uint8Array.from(atob(a), (c) => c.charCodeAt(0))], 'pushed.bin'));
    dt.items.add(new File([Uint8Array.from(atob(b), (c) => c.charCodeAt(0))], 'fresh.bin'));
    return dt;
  }, [pushed.toString('base64'), fresh.toString('base64')]);
  await page.dispatchEvent('#drop-zone', 'drop', { dataTransfer: transfer });
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#uploads .upload')];
    return rows.length === 2 && rows.every((e) => e.dataset.state === 'complete');
  }, null, { timeout: 120000, polling: 100 });
  const sent = async (name) => Number(await row(page, name).getAttribute('data-bytes-sent'));
  report.cli_then_page_bytes_sent = await sent('pushed.bin');
  assert.equal(await sent('pushed.bin'), 0, 'a file the CLI pushed was sent again');
  assert.ok(await sent('fresh.bin') > 0);
  const back = Buffer.from(await (await api('/v1/files/fresh.bin')).arrayBuffer());
  assert.equal(sha256(back), sha256(fresh));
  await page.context().close();
});

test('the page works at phone width', async () => {
  const page = await openPage({ width: 390, height: 844 });
  await page.waitForSelector('#files .file');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  report.phone_screenshot_colours = await screenshot(page, 'page-phone.png');
  await page.context().close();
});

test('behind the proxy, every server answered part of it', { skip: SERVERS <= 1 }, async () => {
  // Requests each server answered, health checks aside (from its own /metrics).
  const each = [];
  for (const s of server.servers) {
    const text = await (await fetch(`${s.url}/metrics`, {
      headers: { Authorization: `Bearer ${TOKEN}` },
    })).text();
    each.push(text.split('\n')
      .filter((l) => l.startsWith('hoard_http_requests_total{') && !l.includes('route="/healthz"'))
      .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0));
  }
  report.requests_per_server = each;
  assert.ok(each.every((n) => n > 0), `requests per server: ${each}`);
});
