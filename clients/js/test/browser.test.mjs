// The verification core in a real browser: Debian's Chromium, headless,
// driven by playwright-core, loads test/browser/page.html from a loopback
// server rooted at this package (the very files `nautilus-client/core`
// resolves to). The page verifies the 19 real AWS documents, attests a live
// dev server on another origin (allowed by --cors-origins), verifies its
// signed results in both forms and must refuse tampered ones; this test reads
// the outcome the page leaves in `window.outcome`. The example page
// (examples/verify-enclave.html) is run against the same server.

import test from 'node:test';
import assert from 'node:assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { PACKAGE_DIR } from './helpers/docs.mjs';
import { startServer } from './helpers/server.mjs';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/** What the loopback server hands out: the library, the pages and the test documents, nothing else. */
const SERVED = /^\/(?:lib\/[\w.-]+\.js|test\/browser\/[\w.-]+\.html|test\/data\/attestation\/[\w.-]+\.(?:cbor|json)|examples\/[\w.-]+\.html)$/;
const TYPES = { '.js': 'text/javascript', '.html': 'text/html; charset=utf-8', '.json': 'application/json', '.cbor': 'application/cbor' };

/**
 * Debian's chromium, installed with apt when missing and we are root (apt
 * caches the package); otherwise the reason this test cannot run.
 */
function chromium() {
  if (fs.existsSync(CHROMIUM)) return { path: CHROMIUM };
  if (process.getuid?.() !== 0) return { skip: `${CHROMIUM} is missing and installing it needs root: apt-get install chromium` };
  const apt = (args) => execFileSync('apt-get', args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 600_000 });
  try {
    apt(['install', '-y', '--no-install-recommends', 'chromium']);
  } catch {
    apt(['update']);
    apt(['install', '-y', '--no-install-recommends', 'chromium']);
  }
  return { path: CHROMIUM };
}

/** Serves SERVED files of this package and `/dev-root.pem` on a free loopback port. */
async function startStatic(pem) {
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://x');
    if (req.method !== 'GET') return res.writeHead(405).end();
    if (pathname === '/dev-root.pem') return res.writeHead(200, { 'content-type': 'text/plain' }).end(pem());
    if (!SERVED.test(pathname)) return res.writeHead(404).end();
    fs.readFile(path.join(PACKAGE_DIR, pathname), (err, body) => {
      if (err) return res.writeHead(404).end();
      res.writeHead(200, { 'content-type': TYPES[path.extname(pathname)] ?? 'application/octet-stream' }).end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = () => new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections();
  });
  return { origin: `http://127.0.0.1:${server.address().port}`, close };
}

const browser = chromium();

test('Chromium verifies the real documents and a live result with the core, and refuses tampered ones', { skip: browser.skip, timeout: 600_000 }, async (t) => {
  const { chromium: playwright } = await import('playwright-core');
  // The page's origin must be known before the server starts (CORS), so the
  // static server starts first and serves the root PEM once it exists.
  let rootPem = '';
  const site = await startStatic(() => rootPem);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'nautilus-chromium-'));
  let server = null;
  let context = null;
  // Torn down in this order, whatever fails: the browser (it writes into its
  // profile until it is closed), the enclave server, the site, the profile.
  t.after(async () => {
    await context?.close();
    await server?.stop();
    await site.close();
    fs.rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  });
  server = await startServer({ args: ['--cors-origins', site.origin] });
  rootPem = server.rootPem;
  // A fresh --user-data-dir: playwright passes `profile` as that flag itself.
  context = await playwright.launchPersistentContext(profile, { executablePath: browser.path, headless: true, args: FLAGS });
  const page = await context.newPage();
  const console = [];
  page.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`));

  await page.goto(`${site.origin}/test/browser/page.html?server=${encodeURIComponent(server.base.replace(/\/$/, ''))}`);
  await page.waitForFunction(() => window.outcome, null, { timeout: 120_000 }).catch((e) => assert.fail(`${e.message}\n${console.join("\n")}`));
  const outcome = await page.evaluate(() => window.outcome);
  assert.deepStrictEqual(outcome.errors, [], console.join('\n'));

  assert.strictEqual(outcome.documents.length, 19);
  for (const d of outcome.documents) {
    assert.ok(d.verified, `${d.name} did not verify with the expected fields`);
    assert.match(d.tamperedRefused ?? 'accepted', /^AttestationError: /, `${d.name}: a flipped byte was ${d.tamperedRefused ?? 'accepted'}`);
  }
  const { live } = outcome;
  assert.strictEqual(live.manifestBound, true);
  assert.match(live.wrongRootRefused ?? 'accepted', /RootMismatch/);
  assert.strictEqual(live.full.intent, 0);
  assert.strictEqual(live.compact.intent, 1);
  for (const form of ['full', 'compact']) {
    assert.strictEqual(live[form].status, 'success', form);
    assert.ok(live[form].stdout.includes('✅ Result:'), live[form].stdout);
    assert.match(live[form].tamperedRefused ?? 'accepted', /ResultError: Signature/, form);
  }
  assert.ok(live.compact.signedBytes < 1024, `${live.compact.signedBytes} bytes`);
  assert.ok(live.full.signedBytes > live.compact.signedBytes);

  // The example page, as a user would run it against this server.
  const example = await context.newPage();
  const query = new URLSearchParams({ url: server.base.replace(/\/$/, ''), root: '/dev-root.pem', debug: '1', args: '4 5', run: '1' });
  await example.goto(`${site.origin}/examples/verify-enclave.html?${query}`);
  await example.waitForFunction(() => window.nautilusOutcome, null, { timeout: 120_000 });
  const shown = await example.evaluate(() => ({ outcome: window.nautilusOutcome, text: document.getElementById('out').textContent }));
  assert.strictEqual(shown.outcome.ok, true, shown.text);
  assert.match(shown.text, /manifest matches the attested user_data/);
  // Without the dev root the same page refuses the enclave.
  const refused = await context.newPage();
  query.delete('root');
  await refused.goto(`${site.origin}/examples/verify-enclave.html?${query}`);
  await refused.waitForFunction(() => window.nautilusOutcome, null, { timeout: 120_000 });
  const refusedOutcome = await refused.evaluate(() => window.nautilusOutcome);
  assert.strictEqual(refusedOutcome.ok, false);
  assert.match(refusedOutcome.error, /root/i);
});
