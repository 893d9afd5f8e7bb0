// Tampered, mis-chained, stale and mismatched documents are rejected with the
// precise reason (the twin of src/attestation-verify/tests/rejections.rs).
// Mutations re-encode real documents, so each gets past parsing and fails
// exactly at the check it targets.

import test from 'node:test';
import assert from 'node:assert';
import crypto from 'node:crypto';
import {
  verifyAttestation,
  parseDocument,
  TrustedRoot,
  AttestationError,
  MAX_OPTIONAL_FIELD_LEN,
  MAX_UNKNOWN_FIELDS,
  MAX_DOCUMENT_LEN,
  DEFAULT_MAX_AGE_SECS,
  DEFAULT_MAX_FUTURE_SKEW_SECS,
} from 'nautilus-client';
import {
  document,
  expectedJson,
  timestampOf,
  withFields,
  flipSerialBit,
  Cose,
  Fields,
  BASE,
  OTHER,
  HOUR_MS,
  encodeBytes,
  encodeText,
  encodePcrMap,
  encodeProtected,
  concat,
  hex,
} from './helpers/docs.mjs';
import { throwsCode } from './helpers/assert.mjs';

const base = () => document(BASE);
const atDocTime = (extra = {}) => ({ at: 'document', ...extra });

const assertError = (fn, code, details) => throwsCode(fn, AttestationError, code, details);

/** The mutated document still parses, then fails verification with `code`. */
async function assertRejected(bytes, code, details) {
  parseDocument(bytes);
  return await assertError(() => verifyAttestation(bytes, atDocTime()), code, details);
}

const parseError = (bytes, code, details) => assertError(() => parseDocument(bytes), code, details);

test('the re-encoded base document still verifies', async () => {
  const rebuilt = withFields(base(), () => {});
  assert.deepStrictEqual(rebuilt, base());
  await verifyAttestation(rebuilt, atDocTime());
});

test('a flipped PCR bit fails the COSE signature', async () => {
  const doc = withFields(base(), (f) => {
    const pcrs = f.pcrs();
    pcrs[3][1][0] ^= 0x80;
    f.set('pcrs', encodePcrMap(pcrs));
  });
  const e = await assertRejected(doc, 'CoseSignature');
  assert.strictEqual(e.message, "COSE signature does not verify with the leaf certificate's key");
});

test('a flipped signature bit fails the COSE signature', async () => {
  for (const byte of [0, 47, 48, 95]) {
    const cose = Cose.decode(base());
    cose.signature[byte] ^= 0x01;
    await assertRejected(cose.encode(), 'CoseSignature');
  }
});

test('a flipped bit in the leaf certificate fails its signature', async () => {
  let doc = withFields(base(), (f) => f.setBytes('certificate', flipSerialBit(f.certificate())));
  const e = await assertRejected(doc, 'CertificateSignature', { cert: 'leaf' });
  assert.strictEqual(e.message, "leaf certificate: signature does not verify under the issuer's key");
  // And a flip in the certificate's own signature value (its last byte).
  doc = withFields(base(), (f) => {
    const leaf = f.certificate();
    leaf[leaf.length - 1] ^= 0x01;
    f.setBytes('certificate', leaf);
  });
  await assertRejected(doc, 'CertificateSignature', { cert: 'leaf' });
});

test('a flipped bit in an intermediate certificate fails its signature, by position', async () => {
  const n = Fields.decode(Cose.decode(base()).payload).cabundle().length;
  assert.ok(n >= 3, 'AWS chains have intermediates');
  for (let index = 1; index < n; index++) {
    const doc = withFields(base(), (f) => {
      const bundle = f.cabundle();
      bundle[index] = flipSerialBit(bundle[index]);
      f.setCabundle(bundle);
    });
    const e = await assertRejected(doc, 'CertificateSignature', { cert: index });
    assert.match(e.message, new RegExp(`^cabundle\\[${index}\\]: signature does not verify`));
  }
});

test('a missing or wrong root is rejected', async () => {
  const rootSha = (await TrustedRoot.awsNitro().sha256Hex());
  // cabundle without the root: the first intermediate sits where the root should.
  let doc = withFields(base(), (f) => f.setCabundle(f.cabundle().slice(1)));
  let e = await assertError(() => verifyAttestation(doc, atDocTime()), 'RootMismatch');
  assert.strictEqual(e.details.expected, rootSha);
  assert.notStrictEqual(e.details.got, rootSha);
  assert.match(e.message, /^cabundle\[0\] is not the trusted root \(SHA-256 [0-9a-f]{64}, expected 641a0321/);
  // A bit flipped in the bundled root is no longer the trusted root.
  doc = withFields(base(), (f) => {
    const bundle = f.cabundle();
    bundle[0] = flipSerialBit(bundle[0]);
    f.setCabundle(bundle);
  });
  await assertError(() => verifyAttestation(doc, atDocTime()), 'RootMismatch');
  // A genuine document checked against some other trusted root: the chain leads to another root.
  const bundle = Fields.decode(Cose.decode(base()).payload).cabundle();
  const otherRoot = TrustedRoot.fromDer(bundle[1]);
  e = await assertError(() => verifyAttestation(base(), atDocTime({ root: otherRoot })), 'RootMismatch');
  assert.strictEqual(e.details.expected, (await otherRoot.sha256Hex()));
});

test('a wrong algorithm header is rejected', async () => {
  const cose = Cose.decode(base());
  assert.deepStrictEqual(cose.protected, encodeProtected([[1, -35]]));
  cose.protected = encodeProtected([[1, -7]]); // ES256
  let e = await parseError(cose.encode(), 'UnsupportedAlgorithm', { found: '-7' });
  assert.strictEqual(e.message, 'unsupported COSE algorithm -7: only ES384 (-35) is accepted');
  cose.protected = encodeProtected([]);
  await parseError(cose.encode(), 'MissingAlgorithm');
  cose.protected = new Uint8Array(0);
  e = await parseError(cose.encode(), 'Truncated', { context: 'protected header' });
  assert.strictEqual(e.message, 'document is truncated: input ended inside the protected header');
  cose.protected = encodeProtected([[1, -35], [2, 1]]);
  await parseError(cose.encode(), 'CriticalHeader');
  cose.protected = concat(encodeProtected([[1, -35]]), [0x00]);
  e = await parseError(cose.encode(), 'TrailingBytes', { context: 'protected header', count: 1 });
  assert.strictEqual(e.message, '1 trailing byte(s) after the protected header');
  // Text algorithm names, and the algorithm twice.
  cose.protected = concat([0xa1, 0x01], encodeText('ES384'));
  await parseError(cose.encode(), 'MalformedCbor');
  cose.protected = encodeProtected([[1, -35], [1, -35]]);
  e = await parseError(cose.encode(), 'MalformedCbor');
  assert.match(e.message, /algorithm label appears twice/);
  // An extra, harmless protected label parses but is covered by the signature.
  cose.protected = encodeProtected([[1, -35], [4, 7]]);
  await assertRejected(cose.encode(), 'CoseSignature');
});

test('every truncation is reported as truncated', async () => {
  const doc = base();
  for (let len = 0; len < doc.length; len++) {
    await assertError(() => parseDocument(doc.subarray(0, len)), 'Truncated');
  }
});

test('trailing bytes are rejected', async () => {
  const doc = concat(base(), [0x00]);
  const e = await parseError(doc, 'TrailingBytes', { context: 'COSE_Sign1 structure', count: 1 });
  assert.strictEqual(e.message, '1 trailing byte(s) after the COSE_Sign1 structure');
  const cose = Cose.decode(base());
  cose.payload = concat(cose.payload, [0xf6, 0xf6]);
  await parseError(cose.encode(), 'TrailingBytes', { context: 'payload', count: 2 });
});

test('three hours after the document, the leaf has expired', async () => {
  const ts = timestampOf(BASE);
  const atMs = ts + 3 * HOUR_MS;
  // Age checks off: the expired leaf alone must be the reason.
  const e = await assertError(() => verifyAttestation(base(), { at: atMs, maxAgeSecs: null }), 'CertificateNotValidAt');
  assert.strictEqual(e.details.cert, 'leaf');
  assert.strictEqual(e.details.at_ms, atMs);
  assert.ok(e.details.not_after_ms < atMs);
  assert.match(e.message, new RegExp(`^leaf certificate: not valid at ${atMs} ms \\(valid from \\d+ ms to \\d+ ms, UNIX time\\)$`));
  // The default (now) fails on expiry too.
  await assertError(() => verifyAttestation(base()), 'CertificateNotValidAt');
});

test('a day before the document, a certificate is not yet valid', async () => {
  const atMs = timestampOf(BASE) - 24 * HOUR_MS;
  const e = await assertError(() => verifyAttestation(base(), { at: atMs }), 'CertificateNotValidAt');
  assert.strictEqual(e.details.at_ms, atMs);
  assert.ok(e.details.not_before_ms > atMs);
});

test('stale and future documents are rejected by age', async () => {
  const ts = timestampOf(BASE);
  // Ten minutes later every certificate is still valid, but the default max age is five.
  let atMs = ts + 10 * 60 * 1000;
  const e = await assertError(() => verifyAttestation(base(), { at: atMs }), 'DocumentTooOld', {
    timestamp_ms: ts,
    at_ms: atMs,
    age_ms: 10 * 60 * 1000,
    max_age_ms: 5 * 60 * 1000,
  });
  assert.strictEqual(e.message, `document is too old: timestamp ${ts} ms is 600000 ms before check time ${atMs} ms (max age 300000 ms)`);
  // maxAgeSecs widens it.
  await verifyAttestation(base(), { at: atMs, maxAgeSecs: 600 });
  // At the leaf's notBefore the timestamp lies in the future; with no skew allowed that is a rejection.
  const leaf = new crypto.X509Certificate(Fields.decode(Cose.decode(base()).payload).certificate());
  atMs = Date.parse(leaf.validFrom);
  assert.ok(atMs < ts, 'leaf issued before the document');
  await assertError(() => verifyAttestation(base(), { at: atMs, maxFutureSkewSecs: 0 }), 'DocumentFromFuture', {
    timestamp_ms: ts,
    at_ms: atMs,
    max_skew_ms: 0,
  });
});

test("another document's leaf is rejected", async () => {
  const other = Fields.decode(Cose.decode(document(OTHER)).payload);
  // Leaf alone swapped: the base chain's last intermediate did not sign it.
  let doc = withFields(base(), (f) => f.setBytes('certificate', other.certificate()));
  await assertRejected(doc, 'CertificateSignature', { cert: 'leaf' });
  // Leaf and whole chain swapped: a valid chain, but its key did not sign this payload.
  doc = withFields(base(), (f) => {
    f.setBytes('certificate', other.certificate());
    f.setCabundle(other.cabundle());
  });
  await assertError(() => verifyAttestation(doc, { at: timestampOf(OTHER), maxAgeSecs: null }), 'CoseSignature');
});

test('wrong expected PCRs are rejected', async () => {
  const exp = expectedJson()[BASE].pcrs;
  const pcr0 = Buffer.from(exp[0], 'hex');
  const wrong = Buffer.from(pcr0);
  wrong[47] ^= 0x01;
  // PCR1 happens to equal PCR0 in this image, so this policy passes...
  await verifyAttestation(base(), atDocTime({ pcrs: new Map([[0, pcr0], [1, pcr0]]) }));
  // ...and a one-bit difference in PCR2 does not.
  const e = await assertError(() => verifyAttestation(base(), atDocTime({ pcrs: new Map([[2, wrong]]) })), 'PcrMismatch', {
    index: 2,
    expected: hex(wrong),
    got: exp[2],
  });
  assert.strictEqual(e.message, `PCR2 mismatch: expected ${hex(wrong)}, got ${exp[2]}`);
  // An index the document does not carry.
  await assertError(() => verifyAttestation(base(), atDocTime({ pcrs: { 20: Buffer.alloc(48) } })), 'PcrMissing', { index: 20 });
});

test('a wrong nonce is rejected', async () => {
  const name = 'anchorage_veracruz_2022-11-09_eu-west-1.cbor';
  const real = expectedJson()[name].nonce;
  const nonce = Buffer.alloc(32, 0xab);
  let e = await assertError(() => verifyAttestation(document(name), atDocTime({ nonce })), 'NonceMismatch', { expected: 'ab'.repeat(32), got: real });
  assert.strictEqual(e.message, `nonce mismatch: expected ${'ab'.repeat(32)}, got ${real}`);
  // A document without a nonce (CBOR null) cannot satisfy an expected one.
  e = await assertError(() => verifyAttestation(base(), atDocTime({ nonce })), 'NonceMismatch', { expected: 'ab'.repeat(32), got: null });
  assert.strictEqual(e.message, `nonce mismatch: expected ${'ab'.repeat(32)}, got none`);
  // Nor can an empty nonce satisfy a non-empty one.
  await assertError(() => verifyAttestation(document('blocky_2024-05-07.cbor'), atDocTime({ nonce: 'ab' })), 'NonceMismatch', { expected: 'ab', got: '' });
});

test('malformed payload fields are rejected with the field name', async () => {
  const parse = (doc, code, details) => parseError(doc, code, details);
  for (const field of ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle']) {
    const e = await parse(withFields(base(), (f) => f.remove(field)), 'MissingField', { field });
    assert.strictEqual(e.message, `payload field \`${field}\` is missing`);
  }
  let e = await parse(withFields(base(), (f) => f.set('module_id', encodeText(''))), 'InvalidField');
  assert.strictEqual(e.details.field, 'module_id');
  e = await parse(withFields(base(), (f) => f.set('digest', encodeText('SHA256'))), 'InvalidField');
  assert.strictEqual(e.message, 'payload field `digest` is invalid: "SHA256", expected "SHA384"');
  e = await parse(withFields(base(), (f) => f.set('timestamp', encodeText('now'))), 'MalformedCbor');
  assert.strictEqual(e.details.context, 'timestamp');
  e = await parse(withFields(base(), (f) => f.setCabundle([])), 'InvalidField');
  assert.strictEqual(e.message, 'payload field `cabundle` is invalid: empty');
  e = await parse(withFields(base(), (f) => f.setCabundle([new Uint8Array(0)])), 'InvalidField');
  assert.strictEqual(e.message, 'payload field `cabundle` is invalid: entry 0 is empty');
  const pcrCases = [
    [[], 'no entries'],
    [[[32, Buffer.alloc(48)]], 'index 32 is not below 32'],
    [[[0, Buffer.alloc(20)]], 'PCR0 is 20 bytes, not 32, 48 or 64'],
    [Array.from({ length: 33 }, (_, i) => [i, Buffer.alloc(48)]), 'more than 32 entries'],
    [[[1, Buffer.alloc(48)], [1, Buffer.alloc(48)]], 'PCR1 appears twice'],
  ];
  for (const [pcrs, reason] of pcrCases) {
    e = await parse(withFields(base(), (f) => f.set('pcrs', encodePcrMap(pcrs))), 'InvalidPcr', { reason });
    assert.strictEqual(e.message, `PCR entry is invalid: ${reason}`);
  }
  const tooLong = Buffer.alloc(MAX_OPTIONAL_FIELD_LEN + 1, 1);
  for (const field of ['public_key', 'user_data', 'nonce']) {
    e = await parse(withFields(base(), (f) => f.setBytes(field, tooLong)), 'InvalidField', { field, reason: '1025 bytes, more than 1024' });
  }
  // A duplicated key: the raw map is extended with a second `nonce`.
  const doc = withFields(base(), (f) => f.entries.push(['nonce', encodeBytes([1, 2, 3])]));
  e = await parse(doc, 'DuplicateField', { field: 'nonce' });
  assert.strictEqual(e.message, 'payload field `nonce` appears more than once');
  const cose = Cose.decode(base());
  cose.signature = cose.signature.subarray(0, 95);
  e = await parse(cose.encode(), 'SignatureLength', { len: 95 });
  assert.strictEqual(e.message, 'COSE signature is 95 bytes; ES384 signatures are 96 bytes (r || s)');
  // Tag 1 (epoch time) instead of 18.
  e = await parse(concat([0xc1], base()), 'UnexpectedTag', { tag: '1' });
  assert.strictEqual(e.message, 'unexpected CBOR tag 1 on the COSE_Sign1 structure (only tag 18 is allowed)');
  // A payload key that is not text, and an unprotected header that is not a map.
  const badKey = Cose.decode(base());
  badKey.payload = concat([0xa1, 0x01, 0x02]);
  e = await parse(badKey.encode(), 'MalformedCbor');
  assert.strictEqual(e.details.context, 'payload key');
  const badUnprotected = Cose.decode(base());
  badUnprotected.unprotectedRaw = new Uint8Array([0x80]);
  e = await parse(badUnprotected.encode(), 'MalformedCbor');
  assert.strictEqual(e.details.context, 'unprotected header');
});

test('unknown fields are tolerated up to the limit', async () => {
  const max = MAX_UNKNOWN_FIELDS;
  // Within the limit: parses, and fails only at the signature (the payload changed).
  let doc = withFields(base(), (f) => {
    for (let i = 0; i < max; i++) f.set(`future_field_${i}`, encodeBytes([i]));
  });
  await assertRejected(doc, 'CoseSignature');
  doc = withFields(base(), (f) => {
    for (let i = 0; i <= max; i++) f.set(`future_field_${i}`, encodeBytes([i]));
  });
  const e = await parseError(doc, 'TooManyUnknownFields', { max });
  assert.strictEqual(e.message, 'payload has more than 16 unknown fields');
});

test('an indefinite-length payload map parses', async () => {
  // The base payload re-encoded as an indefinite map parses; only the
  // signature (over the original bytes) notices the change.
  const cose = Cose.decode(base());
  const definite = cose.payload;
  assert.strictEqual(definite[0] & 0xe0, 0xa0);
  assert.ok(definite[0] < 0xb8);
  cose.payload = concat([0xbf], definite.subarray(1), [0xff]);
  await assertRejected(cose.encode(), 'CoseSignature');
});

test('protected header entries are capped at the limit', async () => {
  // The algorithm plus harmless labels 3, 4, ... (2 would be `crit`).
  const header = (entries) => encodeProtected([[1, -35], ...Array.from({ length: entries - 1 }, (_, i) => [i + 3, 0])]);
  const cose = Cose.decode(base());
  cose.protected = header(MAX_UNKNOWN_FIELDS);
  // At the limit it parses; only the signature (over the original header) fails.
  await assertRejected(cose.encode(), 'CoseSignature');
  cose.protected = header(MAX_UNKNOWN_FIELDS + 1);
  await parseError(cose.encode(), 'MalformedCbor', { context: 'protected header', reason: 'more than 16 entries' });
});

test('the document size limit is inclusive', async () => {
  // Pad a real document with an unknown field to exactly `len` bytes. The
  // length heads grow with the padding, so converge rather than compute.
  const padded = (len) => {
    let pad = len - base().length;
    for (;;) {
      const doc = withFields(base(), (f) => f.setBytes('padding', new Uint8Array(pad)));
      if (doc.length === len) return doc;
      pad += len - doc.length;
    }
  };
  await assertRejected(padded(MAX_DOCUMENT_LEN), 'CoseSignature');
  await parseError(padded(MAX_DOCUMENT_LEN + 1), 'InputTooLarge', { len: MAX_DOCUMENT_LEN + 1, max: MAX_DOCUMENT_LEN });
});

test('age and future-skew limits are inclusive to the millisecond', async () => {
  const ts = timestampOf(BASE);
  const maxAge = DEFAULT_MAX_AGE_SECS * 1000;
  await verifyAttestation(base(), { at: ts + maxAge });
  await assertError(() => verifyAttestation(base(), { at: ts + maxAge + 1 }), 'DocumentTooOld', {
    timestamp_ms: ts,
    at_ms: ts + maxAge + 1,
    age_ms: maxAge + 1,
    max_age_ms: maxAge,
  });
  // A max age of zero accepts a document checked at its own timestamp.
  await verifyAttestation(base(), { at: ts, maxAgeSecs: 0 });

  const skew = DEFAULT_MAX_FUTURE_SKEW_SECS * 1000;
  const leaf = new crypto.X509Certificate(Fields.decode(Cose.decode(base()).payload).certificate());
  assert.ok(Date.parse(leaf.validFrom) < ts - skew - 1, 'the leaf is valid a skew before the document');
  await verifyAttestation(base(), { at: ts - skew });
  await assertError(() => verifyAttestation(base(), { at: ts - skew - 1 }), 'DocumentFromFuture', { timestamp_ms: ts, at_ms: ts - skew - 1, max_skew_ms: skew });
  await verifyAttestation(base(), { at: ts, maxFutureSkewSecs: 0 });
  await assertError(() => verifyAttestation(base(), { at: ts - 1, maxFutureSkewSecs: 0 }), 'DocumentFromFuture');
});
