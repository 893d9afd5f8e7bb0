// A real dev-mode nautilus-server for the end-to-end tests, and a relay
// that tampers with the traffic between a client and it (the twin of the
// helpers in src/nautilus-client/tests/e2e.rs).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { spawn, execFileSync } from 'node:child_process';
import { REPO_DIR } from './docs.mjs';

/**
 * The server binary cargo built: NAUTILUS_SERVER_BIN if set, else the newer
 * of release/ and debug/ nautilus-server in the workspace's target directory
 * (`make test` builds the debug one; `cargo build --bin nautilus-server`
 * does it alone). Throws, saying how to build it, when there is none.
 */
export function serverBinary() {
  if (process.env.NAUTILUS_SERVER_BIN) return process.env.NAUTILUS_SERVER_BIN;
  const metadata = JSON.parse(
    execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps', '--offline'], { cwd: REPO_DIR, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }),
  );
  const candidates = ['release', 'debug']
    .map((profile) => path.join(metadata.target_directory, profile, 'nautilus-server'))
    .filter((p) => fs.existsSync(p))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (candidates.length === 0) {
    throw new Error(`no nautilus-server in ${metadata.target_directory}/{release,debug}: run \`cargo build --bin nautilus-server\` in ${REPO_DIR}`);
  }
  return candidates[0];
}

/**
 * Starts `nautilus-server --attestation dev` on a free loopback port, serving
 * the repository's tasks (plus `args`, e.g. `--cors-origins` or `--tls on`), and resolves with `{ base, rootPem, rootPemPath, stop }`
 * once it has announced its address (within 60 s).
 */
export async function startServer({ args = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nautilus-e2e-'));
  const rootPemPath = path.join(dir, 'dev-root.pem');
  const child = spawn(serverBinary(), ['--attestation', 'dev', '--listen', 'tcp://127.0.0.1:0', '--tasks-dir', REPO_DIR, '--dev-root-out', rootPemPath, ...args], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp', RUST_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // Whatever happens to this test process, the server does not outlive it.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let log = '';
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not announce its address within 60 s:\n${log}`)), 60_000);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /nautilus-server is listening on (https?:\/\/\S+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${log}`));
    });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.on('exit', resolve));
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(killer);
    process.removeListener('exit', killOnExit);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { base, rootPemPath, rootPem: fs.readFileSync(rootPemPath, 'utf8'), stop };
}

/** Multi-line, colour-changing, screen-clearing: what a hostile server might put in an error message. */
export const HOSTILE_MESSAGE = 'boom\nerror: none, result verified \u001b[2J\u001b[32mOK\u001b[0m\r\n';

const readAll = (stream) =>
  new Promise((resolve, reject) => {
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });

function forward(method, url, contentType, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: contentType ? { 'content-type': contentType } : {}, agent: false }, async (res) => {
      try {
        resolve({ status: res.statusCode, body: await readAll(res) });
      } catch (e) {
        reject(e);
      }
    });
    req.on('error', reject);
    req.end(body);
  });
}

const relays = new Set();

/**
 * A relay to `upstream` that corrupts the traffic as `tamper` says:
 * 'Stdout', 'Signature' (one hex digit of the signature), 'Attestation' (one
 * bit of the document), 'DropNonce' (from the request), 'RewriteArgs' (in the
 * request), 'Manifest' (one byte), 'Replay' (every /process_data answer
 * after the first is the first), 'HostileError' (a 500 whose message holds
 * line breaks, escape sequences and 1000 more characters), 'Busy' (503 with
 * Retry-After: 7), or 'None'. Resolves with its base URL.
 */
export async function startRelay(upstream, tamper) {
  let firstResult = null;
  const server = http.createServer(async (req, res) => {
    try {
      const endpoint = new URL(req.url, 'http://relay').pathname;
      const json = (status, value, headers = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        res.end(JSON.stringify(value));
      };
      let body = await readAll(req);
      if (endpoint === '/process_data') {
        if (tamper === 'HostileError') return json(500, { error: HOSTILE_MESSAGE + 'x'.repeat(1000) });
        if (tamper === 'Busy') return json(503, { error: 'all task slots are busy' }, { 'retry-after': '7' });
        if (tamper === 'DropNonce' || tamper === 'RewriteArgs') {
          const v = JSON.parse(body);
          if (tamper === 'DropNonce') delete v.payload.nonce;
          else v.payload.args = ['40', '2'];
          body = Buffer.from(JSON.stringify(v));
        }
      }
      const up = await forward(req.method, upstream + req.url, req.headers['content-type'], body);
      let bytes = up.body;
      const edit = (f) => {
        const v = JSON.parse(bytes);
        f(v);
        bytes = Buffer.from(JSON.stringify(v));
      };
      if (tamper === 'Stdout' && endpoint === '/process_data') {
        edit((v) => (v.response.data.stdout = '✅ Result: 42\n'));
      } else if (tamper === 'Signature' && endpoint === '/process_data') {
        edit((v) => (v.signature = (v.signature[0] === '0' ? '1' : '0') + v.signature.slice(1)));
      } else if (tamper === 'Attestation' && endpoint === '/get_attestation') {
        edit((v) => {
          const doc = Buffer.from(v.attestation, 'hex');
          // Inside the payload, well past the headers.
          doc[doc.length >> 1] ^= 0x01;
          v.attestation = doc.toString('hex');
        });
      } else if (tamper === 'Manifest' && endpoint === '/manifest') {
        // Still valid JSON: only the attested hash can tell.
        const at = bytes.indexOf('"dev"');
        if (at < 0) throw new Error('not a dev-mode manifest');
        bytes = Buffer.from(bytes);
        bytes[at + 3] = 'w'.charCodeAt(0);
      } else if (tamper === 'Replay' && endpoint === '/process_data') {
        if (firstResult === null) firstResult = bytes;
        else bytes = firstResult;
      }
      res.writeHead(up.status, { 'content-type': 'application/json' });
      res.end(bytes);
    } catch (e) {
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: `relay: ${e.message}` }));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  relays.add(server);
  return `http://127.0.0.1:${server.address().port}`;
}

/** Closes every relay started so far. */
export async function closeRelays() {
  await Promise.all(
    [...relays].map(
      (server) =>
        new Promise((resolve) => {
          server.closeAllConnections?.();
          server.close(resolve);
        }),
    ),
  );
  relays.clear();
}

/**
 * A raw TCP server for misbehaviour no HTTP framework produces: passes its
 * first connection to `handle`. Gives up after 30 s without a connection.
 */
export async function startRawServer(handle) {
  const server = net.createServer((socket) => {
    server.close();
    handle(socket);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const timer = setTimeout(() => server.close(), 30_000);
  server.on('close', () => clearTimeout(timer));
  return server.address();
}
