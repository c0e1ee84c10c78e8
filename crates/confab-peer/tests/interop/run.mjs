// Runs page.html in headless Chromium (fake camera and microphone, its own WebRTC) against a
// confab-signal server, for `--duration` seconds, then prints one JSON line: what Chromium
// decoded and heard from each peer. Used by crates/confab-peer/tests/interop.rs.
//
//   node run.mjs --server ws://127.0.0.1:8787/ws --room r --duration 10 [--page-port 8788]
//   node run.mjs --server ... --room r --probe    prints {"type":"chromium_outcome",
//                                                 "outcome":"joined"|"refused"} and exits
//   node run.mjs ... --size 1280x720 --tile 576x323 --headed
//       the call-screen benchmark's anchor: that camera size, a self view and the remote
//       video drawn at the tile's size, in a window on $DISPLAY (software compositing)
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) =>
  (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const dir = path.dirname(fileURLToPath(import.meta.url));
const html = fs.readFileSync(path.join(dir, 'page.html'));

// Served over http://127.0.0.1 (a secure context, as getUserMedia requires).
const server = http.createServer((req, res) => { res.setHeader('content-type', 'text/html'); res.end(html); });
// A known port gives the page a known origin (http://127.0.0.1:PORT) for --allow-origin.
await new Promise((r) => server.listen(Number(args['page-port'] || 0), '127.0.0.1', r));
const url = `http://127.0.0.1:${server.address().port}/?server=${encodeURIComponent(args.server)}` +
  `&room=${encodeURIComponent(args.room)}&name=${encodeURIComponent(args.name || 'Chromium')}` +
  (args.size ? `&width=${args.size.split('x')[0]}&height=${args.size.split('x')[1]}` : '') +
  (args.tile ? `&tile=${args.tile}` : '');

const browser = await chromium.launch({
  headless: !process.argv.includes('--headed'),
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The fake camera runs at 20 fps unless told; the benchmark's anchor (--size) wants 30.
  args: ['--no-sandbox', args.size ? '--use-fake-device-for-media-stream=fps=30' : '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});
let result;
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (process.env.CONFAB_INTEROP_DEBUG) console.error(m.text()); });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(url);
  if (process.argv.includes('--probe')) {
    await page.waitForFunction(() => window.outcome, null, { timeout: 30000 });
    console.log(JSON.stringify({ type: 'chromium_outcome', outcome: await page.evaluate(() => window.outcome) }));
  } else {
    await page.waitForFunction(() => window.ready === true, null, { timeout: 30000 });
    // In the room: a test that wants Chromium there first starts its peer on this line.
    console.log(JSON.stringify({ type: 'chromium_ready' }));
    await new Promise((r) => setTimeout(r, Number(args.duration || 10) * 1000));
    result = await page.evaluate(() => window.report());
  }
} finally {
  await browser.close();
  server.close();
}
if (result) console.log(JSON.stringify({ type: 'chromium_summary', ...result }));
