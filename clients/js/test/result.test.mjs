// verifyResult: every binding check of the Rust client's `verify_result`
// (src/nautilus-client/src/result.rs), with its messages, on answers signed
// here with real P-256 keys.

import test from 'node:test';
import assert from 'node:assert';
import crypto from 'node:crypto';
import { verifyResult, signingBytes, normalizeTaskPath, ResultError } from 'nautilus-client';
import { throwsCode } from './helpers/assert.mjs';

const N = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551');
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');

function newKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const jwk = publicKey.export({ format: 'jwk' });
  const y = Buffer.from(jwk.y, 'base64url');
  const compressed = Buffer.concat([Buffer.from([2 + (y[31] & 1)]), Buffer.from(jwk.x, 'base64url')]);
  return { privateKey, publicKeyHex: compressed.toString('hex') };
}

/** A properly signed (low-S) result, after `edit` changed its data. */
function signed(nonce, edit = () => {}) {
  const key = newKey();
  const data = {
    task_id: 'id',
    task_path: 'nodejs-task',
    task_digest: 'ab'.repeat(32),
    args: ['1'],
    stdin_sha256: sha256('in'),
    nonce,
    status: 'success',
    exit_code: 0,
    signal: null,
    stdout: 'out',
    stderr: '',
    stdout_truncated: false,
    stderr_truncated: false,
    execution_time_ms: 5,
    limit: null,
    resources: { cpu_time_ms: 3, peak_memory_bytes: 1024 },
    egress: [],
  };
  edit(data);
  const response = { intent: 0, timestamp_ms: 10_000, data };
  const sig = crypto.sign('sha256', signingBytes(response), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
  const s = BigInt('0x' + sig.subarray(32).toString('hex'));
  const low = s > N / 2n ? N - s : s;
  return { signed: { response, signature: sig.subarray(0, 32).toString('hex') + low.toString(16).padStart(64, '0') }, key };
}

const expected = (over = {}) => ({
  taskPath: './nodejs-task/',
  args: ['1'],
  stdin: 'in',
  nonce: 'aa',
  taskDigest: 'ab'.repeat(32),
  notBeforeMs: 10_000,
  notAfterMs: 10_000,
  clockSkewMs: 0,
  ...over,
});

const resultError = (fn, code) => throwsCode(fn, ResultError, code);

test('a faithful answer passes and each deviation is named, with the Rust wording', async () => {
  const { signed: s, key } = signed('aa');
  const check = (over) => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected(over) });
  await check({});
  const mismatch = (over) => resultError(() => check(over), 'Mismatch');

  let e = await mismatch({ args: ['2'] });
  assert.strictEqual(e.details.field, 'args');
  assert.strictEqual(e.message, 'signed args is "[\\"1\\"]", but "[\\"2\\"]" was asked for');
  e = await mismatch({ nonce: 'bb' });
  assert.strictEqual(e.message, 'signed nonce is "aa", but "bb" was asked for');
  e = await mismatch({ stdin: null });
  assert.strictEqual(e.message, `signed stdin_sha256 is "${sha256('in')}", but "none" was asked for`);
  assert.strictEqual((await mismatch({ stdin: 'other' })).details.field, 'stdin_sha256');
  e = await mismatch({ taskPath: 'other' });
  assert.strictEqual(e.message, 'signed task_path is "nodejs-task", but "other" was asked for');
  assert.strictEqual((await mismatch({ taskDigest: 'cd'.repeat(32) })).details.field, 'task_digest');
  // Without a known digest, the digest is not compared.
  await check({ taskDigest: null });
  // A destination the manifest does not list for the task, with the Rust wording.
  const entry = { host: 'a.example.org', port: 443, connections: 1, bytes_out: 1, bytes_in: 1 };
  const { signed: reached, key: k3 } = signed('aa', (d) => d.egress.push(entry));
  const checkReached = (egress) => verifyResult(reached, { publicKey: k3.publicKeyHex, expect: expected({ egress }) });
  e = await resultError(() => checkReached([]), 'Mismatch');
  assert.strictEqual(e.message, 'signed egress is "a.example.org:443", but "one of []" was asked for');
  await checkReached(['a.example.org:443']);
  await checkReached(null);
  // Stdin as bytes hashes the same.
  await check({ stdin: Buffer.from('in') });

  const { signed: noNonce, key: k2 } = signed(null);
  e = await resultError(() => verifyResult(noNonce, { publicKey: k2.publicKeyHex, expect: expected() }), 'Mismatch');
  assert.strictEqual(e.message, 'signed nonce is "none", but "aa" was asked for');

  e = await resultError(() => check({ notBeforeMs: 20_000, notAfterMs: 20_000 }), 'Stale');
  assert.strictEqual(e.message, 'signed timestamp 10000 ms is outside the request window 20000..=20000 ms');
  // The default clock skew is 60 s either way.
  await verifyResult(s, { publicKey: key.publicKeyHex, expect: { ...expected(), clockSkewMs: undefined, notBeforeMs: 70_000, notAfterMs: 70_000 } });
  await resultError(() => verifyResult(s, { publicKey: key.publicKeyHex, expect: { ...expected(), clockSkewMs: undefined, notBeforeMs: 70_001, notAfterMs: 70_001 } }), 'Stale');

  e = await resultError(() => verifyResult(s, { publicKey: newKey().publicKeyHex, expect: expected() }), 'Signature');
  assert.strictEqual(e.message, 'result signature is invalid: signature does not verify against the attested public key');
});

test('a changed field or signature is a signature failure, checked before any echo', async () => {
  const { signed: s, key } = signed('aa');
  const tampered = structuredClone(s);
  tampered.response.data.stdout = '✅ Result: 42\n';
  await resultError(() => verifyResult(tampered, { publicKey: key.publicKeyHex, expect: expected() }), 'Signature');
  // Even if the echo also differs, the signature is reported: it is checked first.
  const both = structuredClone(s);
  both.response.data.nonce = 'bb';
  await resultError(() => verifyResult(both, { publicKey: key.publicKeyHex, expect: expected() }), 'Signature');
  const intent = structuredClone(s);
  intent.response.intent = 1;
  let e = await resultError(() => verifyResult(intent, { publicKey: key.publicKeyHex, expect: expected() }), 'Signature');
  assert.strictEqual(e.message, 'result signature is invalid: intent is 1, expected 0');
  const shape = structuredClone(s);
  shape.response.data.exit_code = '0';
  e = await resultError(() => verifyResult(shape, { publicKey: key.publicKeyHex, expect: expected() }), 'Signature');
  assert.match(e.message, /^result signature is invalid: response\.data\.exit_code: expected an i32/);
  const high = structuredClone(s);
  const sValue = BigInt('0x' + s.signature.slice(64));
  high.signature = s.signature.slice(0, 64) + (N - sValue).toString(16).padStart(64, '0');
  e = await resultError(() => verifyResult(high, { publicKey: key.publicKeyHex, expect: expected() }), 'Signature');
  assert.strictEqual(e.message, 'result signature is invalid: signature is not low-S normalized');
});

test('the freshness window is inclusive at both ends', async () => {
  // The result is signed at 10 000 ms; the window is [notBefore - skew, notAfter + skew].
  const { signed: s, key } = signed('aa');
  const check = (notBeforeMs, notAfterMs, clockSkewMs) => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected({ notBeforeMs, notAfterMs, clockSkewMs }) });
  for (const [nb, na, skew] of [
    [10_000, 10_000, 0],
    [11_000, 12_000, 1_000], // starts exactly `skew` after the timestamp
    [7_000, 9_000, 1_000], // ends exactly `skew` before it
  ]) {
    await check(nb, na, skew);
  }
  for (const [nb, na, skew, fromMs, toMs] of [
    // Signed after the window (a clock running ahead, or a replay).
    [7_000, 8_999, 1_000, 6_000, 9_999],
    [0, 9_999, 0, 0, 9_999],
    // Signed before it.
    [11_001, 12_000, 1_000, 10_001, 13_000],
    [10_001, 10_001, 0, 10_001, 10_001],
  ]) {
    const e = await resultError(() => check(nb, na, skew), 'Stale');
    assert.deepStrictEqual(e.details, { timestamp_ms: 10_000, from_ms: fromMs, to_ms: toMs });
  }
});

test('a signed status must agree with the exit code', async () => {
  for (const [status, exitCode, shown] of [
    ['success', 1, 'Some(1)'],
    ['success', null, 'None'],
    ['failed', 0, 'Some(0)'],
    ['timeout', 0, 'Some(0)'],
    ['killed', 1, 'Some(1)'],
  ]) {
    const { signed: s, key } = signed('aa', (d) => {
      d.status = status;
      d.exit_code = exitCode;
    });
    const e = await resultError(() => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected() }), 'Inconsistent');
    assert.deepStrictEqual(e.details, { status, exit_code: exitCode });
    assert.strictEqual(e.message, `signed status "${status}" contradicts exit code ${shown}`);
  }
  const { signed: failed, key } = signed('aa', (d) => {
    d.status = 'failed';
    d.exit_code = 1;
  });
  await verifyResult(failed, { publicKey: key.publicKeyHex, expect: expected() });
});

test('task paths compare after normalization', async () => {
  assert.strictEqual(normalizeTaskPath('./a//b/'), 'a/b');
  assert.strictEqual(normalizeTaskPath('nodejs-task'), 'nodejs-task');
});

test('misuse is a TypeError, not a silent pass', async () => {
  const { signed: s, key } = signed('aa');
  await assert.rejects(async () => verifyResult(s, { publicKey: key.publicKeyHex }), TypeError);
  await assert.rejects(async () => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected({ nonce: undefined }) }), TypeError);
  await assert.rejects(async () => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected({ notAfterMs: '1' }) }), TypeError);
  await assert.rejects(async () => verifyResult(s, { publicKey: 'zz', expect: expected() }), TypeError);
});

test('args are compared whole: a signed prefix or extension of the asked args is a mismatch', async () => {
  const { signed: s, key } = signed('aa', (d) => (d.args = ['1', '2']));
  const check = (args) => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected({ args }) });
  await check(['1', '2']);
  for (const args of [['1'], ['1', '2', '3'], [], ['2', '1']]) {
    assert.strictEqual((await resultError(() => check(args), 'Mismatch')).details.field, 'args', JSON.stringify(args));
  }
  // Without `args`, none are expected.
  const { signed: none, key: k2 } = signed('aa', (d) => (d.args = []));
  const { args, ...noArgs } = expected();
  assert.deepStrictEqual(args, ['1']);
  await verifyResult(none, { publicKey: k2.publicKeyHex, expect: noArgs });
  await resultError(() => verifyResult(s, { publicKey: key.publicKeyHex, expect: noArgs }), 'Mismatch');
});

test('a result signed without stdin, when stdin was sent, says "none"', async () => {
  const { signed: s, key } = signed('aa', (d) => (d.stdin_sha256 = null));
  const e = await resultError(() => verifyResult(s, { publicKey: key.publicKeyHex, expect: expected() }), 'Mismatch');
  assert.strictEqual(e.message, `signed stdin_sha256 is "none", but "${sha256('in')}" was asked for`);
  await verifyResult(s, { publicKey: key.publicKeyHex, expect: expected({ stdin: null }) });
});

test('each malformed `expect` member is a TypeError naming it', async () => {
  const { signed: s, key } = signed('aa');
  const misuse = (expect, message) => assert.rejects(async () => verifyResult(s, { publicKey: key.publicKeyHex, expect }), { name: 'TypeError', message });
  for (const expect of [null, 'x', 1]) misuse(expect, '`expect` must be an object');
  await misuse(expected({ taskPath: 1 }), '`expect.taskPath` must be a string');
  for (const args of ['1', [1], ['1', null], { 0: '1', length: 1 }]) misuse(expected({ args }), '`expect.args` must be an array of strings');
  for (const stdin of [1, {}, [105, 110]]) misuse(expected({ stdin }), '`expect.stdin` must be a string, bytes or null');
  await misuse(expected({ nonce: null }), '`expect.nonce` must be the hex nonce sent');
  await misuse(expected({ taskDigest: 1 }), '`expect.taskDigest` must be a string or null');
  for (const name of ['notBeforeMs', 'notAfterMs', 'clockSkewMs']) {
    for (const v of [-1, 1.5, '1', 2 ** 53]) misuse(expected({ [name]: v }), `\`expect.${name}\` must be a non-negative integer (ms)`);
  }
  // The edges of what is allowed: 0 ms, bytes for stdin, no digest.
  await verifyResult(s, { publicKey: key.publicKeyHex, expect: expected({ clockSkewMs: 0, stdin: new Uint8Array(Buffer.from('in')), taskDigest: null }) });
});
