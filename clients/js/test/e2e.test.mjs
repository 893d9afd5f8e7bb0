// End to end: the JS Client and the nautilus-verify CLI against a real
// dev-mode nautilus-server process, directly and through a relay that
// tampers with the traffic (the cases of src/nautilus-client/tests/e2e.rs,
// plus rewritten request arguments).

import test from 'node:test';
import assert from 'node:assert';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { Client, ClientError, TrustedRoot, verifyResult, signingBytes } from 'nautilus-client';
import { PACKAGE_DIR } from './helpers/docs.mjs';
import { startServer, startRelay, closeRelays, startRawServer } from './helpers/server.mjs';
import { rejectsCode } from './helpers/assert.mjs';

const BIN = path.join(PACKAGE_DIR, 'bin', 'nautilus-verify.js');

let server;
test.before(async () => {
  server = await startServer();
});
test.after(async () => {
  await closeRelays();
  await server?.stop();
});
test.afterEach(closeRelays);

/** Runs the CLI without blocking this process's event loop (the relay lives here). */
function cli(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? error.signal) : 0, stdout, stderr });
    });
  });
}

function runArgs(url, { root = true, allowDebug = true } = {}) {
  return ['run', '--url', url, ...(root ? ['--root', server.rootPemPath] : []), ...(allowDebug ? ['--allow-debug'] : []), '--', '1', '2', '3'];
}

const clientError = (promise, code) => rejectsCode(promise, ClientError, code);

test('the CLI runs a verified task only with the dev root and debug consent', async () => {
  const ok = await cli(runArgs(server.base));
  assert.strictEqual(ok.code, 0, ok.stderr);
  const v = JSON.parse(ok.stdout);
  assert.deepStrictEqual(Object.keys(v), ['response', 'signature']);
  assert.deepStrictEqual(Object.keys(v.response), ['intent', 'timestamp_ms', 'data']);
  const data = v.response.data;
  assert.strictEqual(data.task_path, 'nodejs-task');
  assert.deepStrictEqual(data.args, ['1', '2', '3']);
  assert.ok(data.stdout.includes('"sum":6'), data.stdout);
  assert.match(data.nonce, /^[0-9a-f]{64}$/, 'fresh 32-byte nonce');

  const noRoot = await cli(runArgs(server.base, { root: false }));
  assert.strictEqual(noRoot.code, 2);
  // The rejections name the flag a dev server needs, on the one line.
  assert.ok(noRoot.stderr.includes('not the trusted root') && noRoot.stderr.includes('--root out/dev-root.pem'), noRoot.stderr);
  assert.strictEqual(noRoot.stderr.trim().split('\n').length, 1, noRoot.stderr);

  const noDebug = await cli(runArgs(server.base, { allowDebug: false }));
  assert.strictEqual(noDebug.code, 2);
  assert.ok(noDebug.stderr.includes('debug-mode') && noDebug.stderr.includes('`--allow-debug`'), noDebug.stderr);

  // --compact: the digests signed, the texts beside, checked against them.
  const args = runArgs(server.base);
  const compact = await cli([...args.slice(0, -4), '--compact', ...args.slice(-4)]);
  assert.strictEqual(compact.code, 0, compact.stderr);
  const c = JSON.parse(compact.stdout);
  assert.deepStrictEqual(Object.keys(c), ['response', 'signature', 'stdout', 'stderr']);
  assert.strictEqual(c.response.intent, 1);
  assert.ok(c.stdout.includes('"sum":6'), c.stdout);
  assert.match(c.response.data.stdout_sha256, /^[0-9a-f]{64}$/);

  // A task that ran and failed is still a verified answer: exit 1.
  const failed = await cli([...runArgs(server.base), 'not-a-number']);
  assert.strictEqual(failed.code, 1, failed.stderr);
  assert.strictEqual(JSON.parse(failed.stdout).response.data.status, 'failed');
});

test('the CLI refuses every tampering relay with one printable line', async () => {
  const cases = [
    ['Stdout', 'result signature is invalid: signature does not verify'],
    ['Signature', 'signature'],
    ['Attestation', 'attestation document rejected: '],
    ['DropNonce', 'signed nonce is "none"'],
    ['RewriteArgs', 'signed args is "[\\"40\\", \\"2\\"]", but "[\\"1\\", \\"2\\", \\"3\\"]" was asked for'],
    ['Manifest', 'manifest does not match the attestation'],
    ['HostileError', 'answered HTTP 500: boom\\nerror: none'],
  ];
  for (const [tamper, reason] of cases) {
    const relay = await startRelay(server.base, tamper);
    const out = await cli(runArgs(relay));
    assert.strictEqual(out.code, 2, `${tamper} was accepted: ${out.stdout}`);
    assert.ok(out.stderr.includes(reason), `${tamper}: ${out.stderr}`);
    // Exactly one line, and nothing a terminal would act on (ESC, CR).
    const line = out.stderr.replace(/\n$/, '');
    assert.ok(!/\p{Cc}/u.test(line), `${tamper}: one printable line of reason: ${JSON.stringify(out.stderr)}`);
    assert.strictEqual(out.stdout, '', `nothing printed as verified for ${tamper}`);
  }
  // The same relay code, not tampering, passes: the refusals above are the tampering's.
  const honest = await cli(runArgs(await startRelay(server.base, 'None')));
  assert.strictEqual(honest.code, 0, honest.stderr);
});

test('the CLI refuses a replayed result', async () => {
  const relay = await startRelay(server.base, 'Replay');
  const first = await cli(runArgs(relay));
  assert.strictEqual(first.code, 0, first.stderr);
  // Same request, so only the nonce tells the old answer from a new one.
  const replayed = await cli(runArgs(relay));
  assert.strictEqual(replayed.code, 2, 'replay accepted');
  assert.strictEqual(replayed.stdout, '');
  const oldNonce = JSON.parse(first.stdout).response.data.nonce;
  assert.ok(replayed.stderr.includes('signed nonce is') && replayed.stderr.includes(oldNonce), replayed.stderr);
});

test('the CLI prints a hostile error message escaped and shortened', async () => {
  const relay = await startRelay(server.base, 'HostileError');
  const out = await cli(runArgs(relay));
  assert.strictEqual(out.code, 2);
  assert.ok(!out.stderr.includes('\u001b'), 'raw ESC reached the terminal');
  assert.ok(out.stderr.includes('result verified \\u{1b}[2J\\u{1b}[32mOK\\u{1b}[0m\\r\\nxxx'), out.stderr);
  // The server sent over 1,000 characters; the message keeps 300.
  const message = out.stderr.split('answered HTTP 500: ')[1].trimEnd();
  assert.strictEqual([...message].length, 301, message);
  assert.ok(message.endsWith('…'));
});

test('the library Client checks the manifest, the task digest and unknown tasks', async () => {
  const client = await Client.connect(server.base, { root: TrustedRoot.fromPem(server.rootPem), allowDebug: true });
  assert.strictEqual(client.manifest.attestation, 'dev');
  assert.ok(client.task('./nodejs-task'));
  assert.ok(client.attestation.module_id.startsWith('dev-'));
  assert.strictEqual(client.attestation.debug, true);
  assert.match(client.publicKey, /^0[23][0-9a-f]{64}$/);

  const signed = await client.runTask({ taskPath: './nodejs-task', args: ['5'], stdin: 'ignored' });
  assert.strictEqual(signed.response.data.status, 'success');
  assert.strictEqual(signed.response.data.task_digest, client.task('nodejs-task').task_digest);
  // The answer re-verifies offline with verifyResult, and only against its own request.
  const expect = { taskPath: 'nodejs-task', args: ['5'], stdin: 'ignored', nonce: signed.response.data.nonce, notBeforeMs: signed.response.timestamp_ms, notAfterMs: signed.response.timestamp_ms };
  await verifyResult(signed, { publicKey: client.publicKey, expect });
  await assert.rejects(async () => verifyResult(signed, { publicKey: client.publicKey, expect: { ...expect, stdin: null } }), /signed stdin_sha256/);

  // The compact form: the digests are signed, the texts come beside and are checked against them.
  const compact = await client.runTask({ taskPath: 'nodejs-task', args: ['5'], signing: 'compact' });
  assert.strictEqual(compact.response.intent, 1);
  assert.ok(compact.stdout.includes('✅ Result:'), compact.stdout);
  assert.strictEqual(compact.response.data.stdout_len, Buffer.byteLength(compact.stdout));
  assert.ok(signingBytes(compact.response).length < 1024);
  const compactExpect = { taskPath: 'nodejs-task', args: ['5'], nonce: compact.response.data.nonce, notBeforeMs: compact.response.timestamp_ms, notAfterMs: compact.response.timestamp_ms };
  const whole = await verifyResult(compact, { publicKey: client.publicKey, expect: compactExpect });
  assert.strictEqual(whole.data.stdout, compact.stdout);
  await assert.rejects(verifyResult({ ...compact, stdout: compact.stdout + ' ' }, { publicKey: client.publicKey, expect: compactExpect }), /returned stdout does not match/);

  await clientError(client.runTask({ taskPath: 'missing' }), 'UnknownTask');
  const e = await clientError(Client.connect(server.base, { allowDebug: true }), 'Attestation');
  assert.strictEqual(e.cause.code, 'RootMismatch');
  const d = await clientError(Client.connect(server.base, { root: server.rootPem }), 'Attestation');
  assert.strictEqual(d.cause.code, 'DebugMode');

  // The attest subcommand prints the verified document and the manifest.
  const out = await cli(['attest', '--url', server.base, '--root', server.rootPemPath, '--allow-debug']);
  assert.strictEqual(out.code, 0, out.stderr);
  const v = JSON.parse(out.stdout);
  assert.deepStrictEqual(Object.keys(v), ['attestation', 'manifest']);
  assert.ok(v.attestation.module_id.startsWith('dev-'));
  assert.strictEqual(v.attestation.debug, true);
  assert.strictEqual(v.manifest.attestation, 'dev');
});

test('the library Client names each binding failure', async () => {
  const options = { root: server.rootPem, allowDebug: true };
  let e = await clientError(Client.connect(await startRelay(server.base, 'Manifest'), options), 'ManifestMismatch');
  assert.notStrictEqual(e.details.expected, e.details.got);

  e = await clientError(Client.connect(await startRelay(server.base, 'Attestation'), options), 'Attestation');
  assert.ok(e.cause.code, 'an AttestationError with a code');

  const cases = [
    ['Stdout', 'Signature'],
    ['Signature', 'Signature'],
    ['DropNonce', 'Mismatch'],
    ['RewriteArgs', 'Mismatch'],
  ];
  for (const [tamper, code] of cases) {
    const client = await Client.connect(await startRelay(server.base, tamper), options);
    e = await clientError(client.runTask({ taskPath: 'nodejs-task', args: ['1', '2', '3'] }), 'Result');
    assert.strictEqual(e.cause.code, code, `${tamper}: ${e.message}`);
  }

  const busy = await Client.connect(await startRelay(server.base, 'Busy'), options);
  e = await clientError(busy.runTask({ taskPath: 'nodejs-task' }), 'Status');
  assert.strictEqual(e.details.status, 503);
  assert.strictEqual(e.details.retry_after_secs, 7);
  assert.ok(e.message.endsWith('retry after 7 s'), e.message);
});

test('an oversized attestation response is cut off at the cap', async () => {
  let hungUp;
  const hangup = new Promise((resolve) => (hungUp = resolve));
  const { port } = await startRawServer((socket) => {
    socket.once('data', () => {
      // Chunked, so no Content-Length warns the client, and without the last
      // chunk: the body never ends, so only a client that stops reading at
      // its cap can return TooLarge instead of timing out.
      const body = Buffer.alloc(300 * 1024, 'a');
      Buffer.from('{"attestation":"').copy(body);
      socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n');
      socket.write(`${body.length.toString(16)}\r\n`);
      socket.write(body);
      socket.write('\r\n');
    });
    socket.on('error', () => {});
    socket.on('close', () => hungUp(true));
  });
  const started = Date.now();
  const e = await clientError(Client.connect(`http://127.0.0.1:${port}`), 'TooLarge');
  assert.deepStrictEqual([e.details.what, e.details.limit], ['attestation response', 262144]);
  assert.ok(Date.now() - started < 20_000, 'gave up at its cap instead of waiting for the end');
  assert.strictEqual(await hangup, true, 'client closed the connection');
});
