'use strict';
// The result format against the vectors the Rust crate checks too
// (src/result-signing/tests/vectors), through the package's CommonJS entry.
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { checkShape, signingBytes, verifySignedResponse } = require('nautilus-client');

const VECTOR_DIR = path.join(__dirname, '..', '..', '..', 'src', 'result-signing', 'tests', 'vectors');
const vectors = fs
  .readdirSync(VECTOR_DIR)
  .filter((name) => name.endsWith('.json'))
  .sort()
  .map((name) => ({ name, ...JSON.parse(fs.readFileSync(path.join(VECTOR_DIR, name), 'utf8')) }));
const v1 = vectors.find((v) => v.name === 'task_result_v1.json');

const N = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551');
const spki = (publicKeyHex) =>
  crypto.createPublicKey({
    key: Buffer.concat([
      Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'),
      Buffer.from(publicKeyHex, 'hex'),
    ]),
    format: 'der',
    type: 'spki',
  });

/** Signs `response` with the vectors' fixed key (low-S), so attacks can start from a valid signature. */
function signWithVectorKey(response) {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.setPrivateKey(Buffer.from(v1.secret_key, 'hex'));
  const point = ecdh.getPublicKey();
  const key = crypto.createPrivateKey({
    format: 'jwk',
    key: {
      kty: 'EC',
      crv: 'P-256',
      d: Buffer.from(v1.secret_key, 'hex').toString('base64url'),
      x: point.subarray(1, 33).toString('base64url'),
      y: point.subarray(33).toString('base64url'),
    },
  });
  const sig = crypto.sign('sha256', signingBytes(response), { key, dsaEncoding: 'ieee-p1363' });
  const s = BigInt('0x' + sig.subarray(32).toString('hex'));
  const low = s > N / 2n ? N - s : s;
  return { response, signature: sig.subarray(0, 32).toString('hex') + low.toString(16).padStart(64, '0') };
}

const signedV1 = () => ({ response: structuredClone(v1.message), signature: v1.signature });

/**
 * `signed` verifies as is; after `alter` it must be refused by the shape
 * check with a message matching `reason` (typically the field's path), never
 * by the signature check: each alteration here used to verify.
 */
async function assertAlteredIsRefused(signed, alter, reason) {
  await verifySignedResponse(signed, v1.public_key);
  const altered = structuredClone(signed);
  alter(altered);
  await assert.rejects(async () => checkShape(altered), reason);
  await assert.rejects(async () => verifySignedResponse(altered, v1.public_key), reason);
}

test('there are vectors, all made with the same fixed key', async () => {
  assert.ok(vectors.length >= 3, `only ${vectors.length} vectors`);
  for (const v of vectors) assert.strictEqual(v.public_key, v1.public_key, v.name);
});

for (const v of vectors) {
  test(`${v.name}: BCS bytes match the Rust vector`, async () => {
    assert.strictEqual(Buffer.from(signingBytes(v.message)).toString('hex'), v.bcs);
  });

  test(`${v.name}: node's crypto verifies the stored bytes, independently of the JS encoder`, async () => {
    const key = spki(v.public_key);
    const sig = Buffer.from(v.signature, 'hex');
    const bytes = Buffer.from(v.bcs, 'hex');
    assert.ok(crypto.verify('sha256', bytes, { key, dsaEncoding: 'ieee-p1363' }, sig));
    bytes[bytes.length - 1] ^= 1;
    assert.ok(!crypto.verify('sha256', bytes, { key, dsaEncoding: 'ieee-p1363' }, sig));
  });

  test(`${v.name}: the signature verifies and tampering is detected`, async () => {
    const signed = () => ({ response: structuredClone(v.message), signature: v.signature });
    await verifySignedResponse(signed(), v.public_key);
    const tampered = signed();
    tampered.response.data.stdout += '!';
    await assert.rejects(async () => verifySignedResponse(tampered, v.public_key), /does not verify/);
    const flipped = signed();
    flipped.response.data.nonce = flipped.response.data.nonce === null ? '00' : null;
    await assert.rejects(async () => verifySignedResponse(flipped, v.public_key), /does not verify/);
  });

  test(`${v.name}: high-S twin is refused`, async () => {
    const s = BigInt('0x' + v.signature.slice(64));
    const high = { response: structuredClone(v.message), signature: v.signature.slice(0, 64) + (N - s).toString(16).padStart(64, '0') };
    await assert.rejects(async () => verifySignedResponse(high, v.public_key), /low-S/);
  });
}

test('exit_code must be an i32 or null, not a number a JS reader would see differently', async () => {
  for (const bad of [0.7, -0.5, 2 ** 31, -(2 ** 31) - 1, 1e300, NaN, Infinity, '0', true, [0]]) {
    await assertAlteredIsRefused(signedV1(), (s) => (s.response.data.exit_code = bad), /^TypeError: response\.data\.exit_code: expected .*i32.* or null/);
  }
  // The i32 bounds themselves are accepted and encoded little-endian.
  const at = (exit_code) => Buffer.from(signingBytes({ ...v1.message, data: { ...v1.message.data, exit_code } })).toString('hex');
  assert.ok(at(-(2 ** 31)).includes('0100000080'));
  assert.ok(at(2 ** 31 - 1).includes('01ffffff7f'));
  assert.ok(at(null).includes('737300000c'), '"success", exit_code None, signal None, stdout length 12');
});

test('u64 and u8 fields must be JSON numbers in range, not strings', async () => {
  const cases = [
    ['timestamp_ms', (s, x) => (s.response.timestamp_ms = x), ['1700000000000', 2 ** 53, -1, 1.5, 1700000000000n, null]],
    ['data.execution_time_ms', (s, x) => (s.response.data.execution_time_ms = x), ['0x2a', '42', 2 ** 64, -0.5, null]],
    ['data.resources.cpu_time_ms', (s, x) => (s.response.data.resources.cpu_time_ms = x), ['38', 2 ** 64, -1, null]],
    ['intent', (s, x) => (s.response.intent = x), [256, -1, 0.5, '0', null, false]],
  ];
  for (const [field, set, values] of cases) {
    for (const bad of values) {
      await assertAlteredIsRefused(signedV1(), (s) => set(s, bad), new RegExp(`^TypeError: response\\.${field.replace('.', '\\.')}: expected`));
    }
  }
  // 2^53 - 1 is the largest u64 a JS number holds exactly; it is accepted.
  const max = signingBytes({ ...v1.message, timestamp_ms: Number.MAX_SAFE_INTEGER });
  assert.strictEqual(Buffer.from(max.subarray(1, 9)).toString('hex'), 'ffffffffffff1f00');
});

test('egress entries are exactly {host, port: u16, connections, bytes_out, bytes_in: u64}', async () => {
  const v4 = vectors.find((v) => v.name === 'task_result_v4.json');
  const signedV4 = () => ({ response: structuredClone(v4.message), signature: v4.signature });
  const cases = [
    [(s) => (s.response.data.egress[0].port = 65536), /^TypeError: response\.data\.egress\[0\]\.port: expected a u16/],
    [(s) => (s.response.data.egress[0].port = '443'), /^TypeError: response\.data\.egress\[0\]\.port: expected a u16/],
    [(s) => (s.response.data.egress[1].bytes_in = 2 ** 53), /^TypeError: response\.data\.egress\[1\]\.bytes_in: expected a u64/],
    [(s) => delete s.response.data.egress[0].connections, /^TypeError: response\.data\.egress\[0\]\.connections: missing/],
    [(s) => (s.response.data.egress[0].extra = 1), /^TypeError: response\.data\.egress\[0\]: unknown field "extra"/],
    [(s) => (s.response.data.egress = null), /^TypeError: response\.data\.egress: expected an array/],
  ];
  for (const [alter, reason] of cases) await assertAlteredIsRefused(signedV4(), alter, reason);
});

test('exactly the Rust fields are accepted at every level, null only for Option', async () => {
  const extra = [
    [(s) => (s.extra = 1), /^TypeError: signed response: unknown field "extra"/],
    [(s) => (s.response.extra = 1), /^TypeError: response: unknown field "extra"/],
    [(s) => (s.response.data.injected = 'x'), /^TypeError: response\.data: unknown field "injected"/],
    [(s) => (s.response.data.resources.injected = 1), /^TypeError: response\.data\.resources: unknown field "injected"/],
  ];
  for (const [alter, reason] of extra) await assertAlteredIsRefused(signedV1(), alter, reason);
  // JSON.parse makes "__proto__" an own key, unlike the assignment above.
  await assertAlteredIsRefused(signedV1(), (s) => (s.response.data = { ...JSON.parse('{"__proto__": 1}'), ...s.response.data }), /unknown field "__proto__"/);

  const missing = [
    [(s) => delete s.signature, /^TypeError: signature: missing/],
    [(s) => delete s.response.timestamp_ms, /^TypeError: response\.timestamp_ms: missing/],
    [(s) => delete s.response.data.signal, /^TypeError: response\.data\.signal: missing/],
    [(s) => delete s.response.data.stdin_sha256, /^TypeError: response\.data\.stdin_sha256: missing/],
    [(s) => delete s.response.data.limit, /^TypeError: response\.data\.limit: missing/],
  ];
  for (const [alter, reason] of missing) await assertAlteredIsRefused(signedV1(), alter, reason);

  for (const field of ['task_id', 'args', 'status', 'stderr', 'stdout_truncated', 'execution_time_ms']) {
    await assertAlteredIsRefused(signedV1(), (s) => (s.response.data[field] = null), new RegExp(`^TypeError: response\\.data\\.${field}: expected`));
  }
  for (const notObject of [null, [], 'x', 0]) {
    await assert.rejects(async () => checkShape(notObject), /^TypeError: signed response: expected an object/);
    await assert.rejects(async () => checkShape({ response: { ...v1.message, data: notObject }, signature: v1.signature }), /^TypeError: response\.data: expected an object/);
  }
});

test('the signature must be exactly 128 lowercase hex digits', async () => {
  const sig = v1.signature;
  assert.notStrictEqual(sig.toUpperCase(), sig, 'the vector signature has hex letters');
  const oneUpper = sig.replace(/[a-f]/, (c) => c.toUpperCase());
  const bad = [sig.toUpperCase(), oneUpper, sig.slice(0, 126), sig + '00', ' ' + sig.slice(1), 'zz' + sig.slice(2), ''];
  for (const signature of bad) {
    await assertAlteredIsRefused(signedV1(), (s) => (s.signature = signature), /^TypeError: signature: expected 128 lowercase hex digits/);
  }
  await assertAlteredIsRefused(signedV1(), (s) => (s.signature = Buffer.from(sig, 'hex')), /^TypeError: signature: expected/);
});

test('strings must be well-formed: a lone surrogate cannot stand in for U+FFFD', async () => {
  // A response that really contains U+FFFD (as lossy decoding of task output does).
  const response = structuredClone(v1.message);
  Object.assign(response.data, { stdout: 'a\ufffdb', args: ['\ufffd', '🦀'], nonce: '\ufffd', signal: '\ufffd' });
  const signed = signWithVectorKey(response);
  for (const lone of ['\ud800', '\udfff', '\udc00\ud800']) {
    await assertAlteredIsRefused(signed, (s) => (s.response.data.stdout = `a${lone}b`), /^TypeError: response\.data\.stdout: expected a well-formed string/);
    await assertAlteredIsRefused(signed, (s) => (s.response.data.args[0] = lone), /^TypeError: response\.data\.args\[0\]: expected a well-formed string/);
    await assertAlteredIsRefused(signed, (s) => (s.response.data.nonce = lone), /^TypeError: response\.data\.nonce: expected a well-formed string .*or null/);
    await assertAlteredIsRefused(signed, (s) => (s.response.data.signal = lone), /^TypeError: response\.data\.signal: expected a well-formed string/);
  }
});

test('the Node 18 lone-surrogate fallback decides like String.prototype.isWellFormed', async () => {
  const samples = ['', 'ascii', '\ufffd', '🦀', '\ud83e\udd80x', '\ud800', 'a\udc00', '\udc00\ud800', '\ud800\ud800\udc00', 'x\ud800\udc00\udc00'];
  const native = samples.map((s) => s.isWellFormed());
  assert.deepStrictEqual(native, [true, true, true, true, true, false, false, false, false, false]);
  const script = `delete String.prototype.isWellFormed;
    const { checkShape } = require(${JSON.stringify(require.resolve('nautilus-client'))});
    const signed = JSON.parse(process.argv[1]);
    const samples = JSON.parse(process.argv[2]);
    console.log(JSON.stringify(samples.map((s) => {
      signed.response.data.stdout = s;
      try { checkShape(signed); return true; } catch (e) { return false; }
    })));`;
  // JSON.stringify writes lone surrogates as \\u escapes, so they survive argv.
  const out = execFileSync(process.execPath, ['-e', script, JSON.stringify(signedV1()), JSON.stringify(samples)], { encoding: 'utf8' });
  assert.deepStrictEqual(JSON.parse(out), native);
});

test('args must be an array of strings and booleans must be booleans', async () => {
  for (const args of ['1,2', { 0: '1', 1: '2', length: 2 }, null]) {
    await assertAlteredIsRefused(signedV1(), (s) => (s.response.data.args = args), /^TypeError: response\.data\.args: expected an array/);
  }
  await assertAlteredIsRefused(signedV1(), (s) => (s.response.data.args = ['1', 2]), /^TypeError: response\.data\.args\[1\]: expected a well-formed string/);
  for (const flag of [0, 'false', null, []]) {
    await assertAlteredIsRefused(signedV1(), (s) => (s.response.data.stdout_truncated = flag), /^TypeError: response\.data\.stdout_truncated: expected a boolean/);
  }
});

test('the public key must be a P-256 SEC1 point, compressed or uncompressed', async () => {
  for (const key of [v1.public_key.slice(0, 64), v1.public_key + '00', 'zz' + v1.public_key.slice(2), '04' + v1.public_key.slice(2), null, 42]) {
    await assert.rejects(async () => verifySignedResponse(signedV1(), key), /^TypeError: public key must be a P-256 SEC1 point/);
  }
  // A 33-byte string that is not on the curve.
  const offCurve = '02' + 'ff'.repeat(32);
  await assert.rejects(async () => verifySignedResponse(signedV1(), offCurve), /^TypeError: public key is not a point on P-256/);
  // The same key uncompressed, as hex and as bytes, verifies the same signature.
  const uncompressed = crypto.createPublicKey({ key: spki(v1.public_key).export({ format: 'jwk' }), format: 'jwk' });
  const jwk = uncompressed.export({ format: 'jwk' });
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
  await verifySignedResponse(signedV1(), point.toString('hex'));
  await verifySignedResponse(signedV1(), point);
  await verifySignedResponse(signedV1(), Buffer.from(v1.public_key, 'hex'));
});

test('r and s must be in 1..n-1, as the Rust parser requires', async () => {
  for (const [r, s] of [[0n, 1n], [1n, 0n], [N, 1n], [1n, N]]) {
    const signature = r.toString(16).padStart(64, '0') + s.toString(16).padStart(64, '0');
    await assert.rejects(async () => verifySignedResponse({ ...signedV1(), signature }, v1.public_key), /^Error: signature is not 128 lowercase hex digits \(64 bytes, r \|\| s\)/);
  }
});

// The tests below pin what mutation testing (`make mutants`) found no test
// noticing: boundaries and the exact wording of refusals.

test('the u8 and u64 bounds themselves are accepted', async () => {
  assert.strictEqual(signingBytes({ ...v1.message, intent: 255 })[0], 255);
  assert.strictEqual(Buffer.from(signingBytes({ ...v1.message, timestamp_ms: 0 }).subarray(1, 9)).toString('hex'), '0000000000000000');
});

test('a refusal names the field, the expected type and a short description of the value', async () => {
  const at = (timestamp_ms) => {
    try {
      checkShape({ response: { ...v1.message, timestamp_ms }, signature: v1.signature });
    } catch (e) {
      return e.message;
    }
    assert.fail(`${timestamp_ms} accepted`);
  };
  const u64 = `response.timestamp_ms: expected a u64 that JS holds exactly: a JSON number, integer 0..${Number.MAX_SAFE_INTEGER} (2^53-1), got`;
  assert.strictEqual(at(null), `${u64} null`);
  assert.strictEqual(at([1]), `${u64} an array`);
  assert.strictEqual(at({}), `${u64} an object`);
  assert.strictEqual(at(7n), `${u64} the BigInt 7n`);
  assert.strictEqual(at(1.5), `${u64} number 1.5`);
  assert.strictEqual(at(NaN), `${u64} number NaN`, 'String(NaN), not JSON.stringify(NaN) = "null"');
  assert.strictEqual(at('1700'), `${u64} string "1700"`);
  // 40 characters of the JSON text, then an ellipsis: a huge value is not echoed.
  assert.strictEqual(at('x'.repeat(38)), `${u64} string "${'x'.repeat(38)}"`);
  assert.strictEqual(at('x'.repeat(39)), `${u64} string "${'x'.repeat(39)}…`);
  const intent = assert.throws.bind(null, () => signingBytes({ ...v1.message, intent: 256 }));
  intent({ name: 'TypeError', message: 'response.intent: expected a u8: a JSON number, integer 0..255, got number 256' });
});

test('a signature is a string: an array holding one is refused', async () => {
  await assertAlteredIsRefused(signedV1(), (s) => (s.signature = [s.signature]), /^TypeError: signature: expected 128 lowercase hex digits \(64 bytes, r \|\| s\), got an array$/);
});

test('a public key in hex is whole bytes of hex, nothing before or after', async () => {
  for (const key of [v1.public_key + '0', v1.public_key + 'zz', v1.public_key + ' ', 'zz' + v1.public_key]) {
    await assert.rejects(async () => verifySignedResponse(signedV1(), key), /^TypeError: public key must be a P-256 SEC1 point/, key);
  }
});

test('a 65-byte key must be an uncompressed point (04), not a hybrid one (06, 07)', async () => {
  const jwk = spki(v1.public_key).export({ format: 'jwk' });
  const xy = Buffer.concat([Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
  await verifySignedResponse(signedV1(), Buffer.concat([Buffer.from([4]), xy]));
  for (const tag of [6, 7, 2]) {
    await assert.rejects(async () => verifySignedResponse(signedV1(), Buffer.concat([Buffer.from([tag]), xy])), /^TypeError: public key must be a P-256 SEC1 point/, `tag ${tag}`);
  }
});

test('s = (n-1)/2 is low-S: it goes on to the signature check, one more is refused as high', async () => {
  const half = (N - 1n) / 2n;
  const withS = (s) => ({ ...signedV1(), signature: v1.signature.slice(0, 64) + s.toString(16).padStart(64, '0') });
  await assert.rejects(async () => verifySignedResponse(withS(half), v1.public_key), /^Error: signature does not verify against the attested public key$/);
  await assert.rejects(async () => verifySignedResponse(withS(half + 1n), v1.public_key), /^Error: signature is not low-S normalized$/);
});

test('the CLI prints a signed response with the keys in the Rust order', async () => {
  // lib/client.js prints it; tested here on the function itself.
  const { canonicalSignedResponse } = require('../lib/result.js');
  const signed = signedV1();
  const reversed = (o) => Object.fromEntries(Object.entries(o).reverse());
  const shuffled = reversed({ ...signed, response: reversed({ ...signed.response, data: reversed(signed.response.data) }) });
  const canonical = canonicalSignedResponse(shuffled);
  assert.deepStrictEqual(canonical, signed);
  assert.strictEqual(JSON.stringify(canonical), JSON.stringify(signed), 'same key order as the Rust-made vector');
  assert.deepStrictEqual(Object.keys(canonical.response.data).slice(0, 4), ['task_id', 'task_path', 'task_digest', 'args']);
  // Options stay null, vectors keep their items and order.
  const other = structuredClone(signed);
  Object.assign(other.response.data, { nonce: null, signal: null, args: ['b', 'a'] });
  const out = canonicalSignedResponse(reversed(other));
  assert.strictEqual(out.response.data.nonce, null);
  assert.deepStrictEqual(out.response.data.args, ['b', 'a']);
  assert.strictEqual(JSON.stringify(out), JSON.stringify(other));
});

// The compact form (intent 1): the pinned vectors in vectors/compact/ are
// the compact messages of the full vectors of the same name.
const COMPACT_DIR = path.join(VECTOR_DIR, 'compact');
const { compactOf, INTENT_TASK_RESULT_COMPACT } = require('nautilus-client');
for (const v of vectors) {
  const c = JSON.parse(fs.readFileSync(path.join(COMPACT_DIR, v.name), 'utf8'));
  const compactSigned = () => ({ response: structuredClone(c.message), signature: c.signature, stdout: c.stdout, stderr: c.stderr });

  test(`compact/${v.name}: the compact form of the full vector, its BCS bytes and signature verify`, async () => {
    assert.strictEqual(c.message.intent, INTENT_TASK_RESULT_COMPACT);
    assert.deepStrictEqual(await compactOf(v.message.data), c.message.data);
    assert.strictEqual(Buffer.from(signingBytes(c.message)).toString('hex'), c.bcs);
    assert.ok(c.bcs.length / 2 < 1024, `${c.bcs.length / 2} bytes`);
    // node's crypto over the stored bytes, independently of the JS encoder.
    assert.ok(crypto.verify('sha256', Buffer.from(c.bcs, 'hex'), { key: spki(c.public_key), dsaEncoding: 'ieee-p1363' }, Buffer.from(c.signature, 'hex')));
    const whole = await verifySignedResponse(compactSigned(), c.public_key);
    assert.deepStrictEqual(whole.data, v.message.data, 'the texts come back whole');
  });

  test(`compact/${v.name}: other texts, a full-form signature or intent, and edited fields are refused`, async () => {
    const t = compactSigned();
    t.stdout += '!';
    await assert.rejects(verifySignedResponse(t, c.public_key), /^Error: the returned stdout does not match the signed stdout_sha256 and stdout_len$/);
    const e = compactSigned();
    e.stderr += '!';
    await assert.rejects(verifySignedResponse(e, c.public_key), /returned stderr does not match/);
    const full = compactSigned();
    full.signature = v.signature;
    await assert.rejects(verifySignedResponse(full, c.public_key), /does not verify/);
    const intent = compactSigned();
    intent.response.intent = 0;
    await assert.rejects(verifySignedResponse(intent, c.public_key), /intent is 0, expected 1/);
    const edited = compactSigned();
    edited.response.data.execution_time_ms += 1;
    await assert.rejects(verifySignedResponse(edited, c.public_key), /does not verify/);
    // The digest must be the lowercase hex spelling the server signs.
    const upper = compactSigned();
    upper.response.data.stdout_sha256 = upper.response.data.stdout_sha256.toUpperCase();
    await assert.rejects(verifySignedResponse(upper, c.public_key), /stdout_sha256: expected 64 lowercase hex digits/);
    // A compact message without its texts is not a compact response.
    const bare = compactSigned();
    delete bare.stdout;
    await assert.rejects(verifySignedResponse(bare, c.public_key), TypeError);
  });
}
