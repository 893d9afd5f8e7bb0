// `https://` end to end: the JS Client and CLI pin the TLS key the enclave
// attested (the manifest's `tls_spki_sha256`), against a real dev-mode
// nautilus-server with `--tls on`: directly, through a relay that forwards
// bytes untouched (what nautilus-proxy is), and through a relay that
// terminates TLS with its own certificate (what a malicious parent instance
// would run). The twin of src/nautilus-client/tests/tls.rs.

import test from 'node:test';
import assert from 'node:assert';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { Client, ClientError, TrustedRoot } from 'nautilus-client';
import { PACKAGE_DIR } from './helpers/docs.mjs';
import { startServer } from './helpers/server.mjs';
import { certificate, generate, P256 } from './helpers/x509.mjs';
import { rejectsCode } from './helpers/assert.mjs';

const BIN = path.join(PACKAGE_DIR, 'bin', 'nautilus-verify.js');
const DAY_MS = 24 * 60 * 60 * 1000;

let server;
const closers = [];
test.before(async () => {
  server = await startServer({ args: ['--tls', 'on'] });
});
test.after(async () => {
  for (const close of closers) close();
  await server?.stop();
});

function cli(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? error.signal) : 0, stdout, stderr });
    });
  });
}

const options = () => ({ root: TrustedRoot.fromPem(server.rootPem), allowDebug: true });
const upstream = () => new URL(server.base);

/** Listens on loopback; resolves with the https:// base URL. */
async function listen(srv) {
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  closers.push(() => srv.close());
  return `https://127.0.0.1:${srv.address().port}`;
}

/** Forwards bytes both ways, untouched. */
function byteRelay() {
  const srv = net.createServer((down) => {
    const up = net.connect(Number(upstream().port), '127.0.0.1');
    down.pipe(up).pipe(down);
    const end = () => (down.destroy(), up.destroy());
    down.on('error', end);
    up.on('error', end);
  });
  return listen(srv);
}

/** Terminates TLS with its own self-signed P-256 certificate and re-encrypts to the enclave: it reads everything. */
async function terminatingRelay() {
  const keys = generate(P256);
  const der = certificate({
    subject: 'nautilus-enclave',
    issuer: 'nautilus-enclave',
    subjectPublic: keys.publicKey,
    issuerPrivate: keys.privateKey,
    notBefore: Date.now() - DAY_MS,
    notAfter: Date.now() + DAY_MS,
    isCa: 'explicit-no-ca',
  });
  const pem = `-----BEGIN CERTIFICATE-----\n${Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
  const srv = tls.createServer({ key: keys.privateKey.export({ type: 'pkcs8', format: 'pem' }), cert: pem }, (down) => {
    const up = tls.connect({ host: '127.0.0.1', port: Number(upstream().port), rejectUnauthorized: false });
    down.pipe(up).pipe(down);
    const end = () => (down.destroy(), up.destroy());
    down.on('error', end);
    up.on('error', end);
  });
  const spki = crypto.createHash('sha256').update(keys.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
  return { base: await listen(srv), spki };
}

test('verified runs over https, directly and through a byte relay', async () => {
  assert.match(server.base, /^https:\/\//);
  for (const base of [server.base, await byteRelay()]) {
    const client = await Client.connect(base, options());
    assert.match(client.manifest.tls_spki_sha256, /^[0-9a-f]{64}$/);
    const signed = await client.runTask({ taskPath: 'nodejs-task', args: ['1', '2'] });
    assert.strictEqual(signed.response.data.status, 'success');
  }
  const out = await cli(['run', '--url', server.base, '--root', server.rootPemPath, '--allow-debug', '--', '1', '2']);
  assert.strictEqual(out.code, 0, out.stderr);
});

test('a relay that terminates TLS is refused, naming both keys', async () => {
  const attested = (await Client.connect(server.base, options())).manifest.tls_spki_sha256;
  const relay = await terminatingRelay();
  const e = await rejectsCode(Client.connect(relay.base, options()), ClientError, 'TlsKeyMismatch');
  assert.strictEqual(e.details.attested, attested);
  assert.strictEqual(e.details.presented, relay.spki);
  assert.ok(e.message.includes('TLS key mismatch'), e.message);

  const out = await cli(['run', '--url', relay.base, '--root', server.rootPemPath, '--allow-debug', '--', '1']);
  assert.strictEqual(out.code, 2);
  assert.ok(out.stderr.includes('TLS key mismatch') && out.stderr.includes(relay.spki), out.stderr);
});

/**
 * A stand-in enclave that says `"attestation": "nsm"` in a manifest its
 * document attests (a synthetic chain: no NSM here), served in plain HTTP.
 */
async function plainNsmServer() {
  const { Chain, makeDocument, DOC_TIMESTAMP_MS } = await import('./helpers/x509.mjs');
  const http = await import('node:http');
  const chain = new Chain();
  const key = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const jwk = key.publicKey.export({ format: 'jwk' });
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
  const manifest = Buffer.from(
    JSON.stringify({ server_version: 'x', attestation: 'nsm', limits: { max_output_bytes: 1, default_timeout_secs: 1 }, tls_spki_sha256: null, tasks: [] }),
  );
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/manifest') return res.end(manifest);
    const doc = makeDocument(chain.cabundle(), chain.leaf(), chain.enclave.privateKey, {
      publicKey: point,
      userData: crypto.createHash('sha256').update(manifest).digest(),
      nonce: Buffer.from(url.searchParams.get('nonce'), 'hex'),
    });
    res.end(JSON.stringify({ attestation: Buffer.from(doc).toString('hex') }));
  });
  const base = (await listen(srv)).replace('https:', 'http:');
  return { base, options: { root: TrustedRoot.fromDer(chain.root.der), at: DOC_TIMESTAMP_MS + 1000 } };
}

test('plain http to an nsm enclave is refused unless insecureHttp', async () => {
  const { base, options: opts } = await plainNsmServer();
  const e = await rejectsCode(Client.connect(base, opts), ClientError, 'InsecureHttp');
  assert.ok(e.message.includes('--insecure-http'), e.message);
  const client = await Client.connect(base, { ...opts, insecureHttp: true });
  assert.strictEqual(client.manifest.attestation, 'nsm');
});
