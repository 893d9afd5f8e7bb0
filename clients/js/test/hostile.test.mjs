// Hostile CBOR: absurd declared lengths, deep nesting, random bytes (the twin
// of src/attestation-verify/tests/hostile.rs). Each input must be rejected
// with an AttestationError: never another exception (a RangeError from a
// huge allocation, a stack overflow), never a verified document.

import test from 'node:test';
import assert from 'node:assert';
import { verifyAttestation, AttestationError, MAX_DOCUMENT_LEN, MAX_NESTING_DEPTH } from 'nautilus-client';
import { document, documents, withFields, Cose, BASE, head64, encodeBytes, concat, SplitMix } from './helpers/docs.mjs';

const HUGE = 1n << 60n;

/** Parses and verifies (debug allowed, at the document's time); returns the AttestationError. */
async function reject(input) {
  try {
    await verifyAttestation(input, { at: 'document', allowDebug: true });
  } catch (e) {
    if (e instanceof AttestationError) return e;
    throw new assert.AssertionError({ message: `not an AttestationError: ${e && e.stack}` });
  }
  assert.fail('hostile input verified');
}

const oneOf = (e, codes, what) => assert.ok(codes.includes(e.code), `${what}: ${e.code}: ${e.message}`);

test('absurd declared lengths fail as truncation, without allocating them', async () => {
  // At the top level: a bstr, an array, a map, each of 2^60.
  for (const major of [2, 4, 5]) {
    const e = await reject(concat(head64(major, HUGE), new Uint8Array(64)));
    oneOf(e, ['MalformedCbor', 'Truncated'], `major ${major}`);
  }
  // A COSE array of 2^60 items.
  let e = await reject(concat(head64(4, HUGE), new Uint8Array(8).fill(0x40)));
  assert.strictEqual(e.code, 'MalformedCbor');
  assert.match(e.message, /expected an array of 4 items, found 1152921504606846976 items/);

  // Inside the COSE array: protected header and payload claim 2^60 bytes.
  const cose = Cose.decode(document(BASE));
  e = await reject(concat([0x84], head64(2, HUGE), cose.protected));
  assert.deepStrictEqual([e.code, e.details], ['Truncated', { context: 'protected header' }]);
  e = await reject(concat([0x84], encodeBytes(cose.protected), [0xa0], head64(2, HUGE), cose.payload));
  assert.deepStrictEqual([e.code, e.details], ['Truncated', { context: 'payload' }]);

  // Inside the payload: a field's bstr, the cabundle array, the pcrs map, and
  // an unknown field's array and map each claim 2^60.
  const cases = [
    ['nonce', head64(2, HUGE)],
    ['cabundle', head64(4, HUGE)],
    ['pcrs', head64(5, HUGE)],
    ['future_field', head64(4, HUGE)],
    ['future_field', head64(5, HUGE)],
  ];
  for (const [key, raw] of cases) {
    e = await reject(withFields(document(BASE), (f) => f.set(key, raw)));
    oneOf(e, ['Truncated', 'MalformedCbor', 'InvalidField', 'InvalidPcr'], key);
  }
  // The payload map itself.
  const c = Cose.decode(document(BASE));
  c.payload = concat(head64(5, HUGE), c.payload.subarray(1));
  assert.strictEqual((await reject(c.encode())).code, 'Truncated');
});

test('deep nesting is refused without exhausting the stack', async () => {
  // 200,000 nested arrays at the top level: over the size cap, refused unread.
  let e = await reject(concat(new Uint8Array(200_000).fill(0x81), [0x00]));
  assert.deepStrictEqual([e.code, e.details], ['InputTooLarge', { len: 200_001, max: MAX_DOCUMENT_LEN }]);
  assert.strictEqual(e.message, 'document is 200001 bytes, more than the 65536-byte limit');
  // As deep as fits under the cap, at the top level and inside the unprotected header.
  const depth = MAX_DOCUMENT_LEN - 100;
  e = await reject(concat(new Uint8Array(depth).fill(0x81), [0x00]));
  assert.strictEqual(e.code, 'MalformedCbor');
  e = await reject(concat([0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa1, 0x00], new Uint8Array(depth).fill(0x81), [0x00]));
  assert.deepStrictEqual([e.code, e.details], ['NestingTooDeep', { context: 'unprotected header', max: MAX_NESTING_DEPTH }]);
  assert.strictEqual(e.message, 'CBOR nesting deeper than 16 levels in the unprotected header');

  // Inside the payload, under an unknown key: arrays, indefinite maps and tag chains.
  const room = MAX_DOCUMENT_LEN - document(BASE).length - 64;
  const nestedArrays = concat(new Uint8Array(room).fill(0x81), [0x00]);
  const nestedMaps = concat(new Array(Math.floor(room / 2)).fill([0xbf, 0x00]).flat(), [0x00]);
  const nestedTags = concat(new Uint8Array(room).fill(0xc6), [0x00]);
  for (const raw of [nestedArrays, nestedMaps, nestedTags]) {
    const doc = withFields(document(BASE), (f) => f.set('future_field', raw));
    assert.ok(doc.length <= MAX_DOCUMENT_LEN);
    e = await reject(doc);
    assert.deepStrictEqual([e.code, e.details], ['NestingTooDeep', { context: 'payload', max: MAX_NESTING_DEPTH }]);
  }
  // Through map keys as well as values: a map whose key is a map whose key is
  // a map... (each level also gets its value, so the bytes are well-formed CBOR).
  const levels = Math.floor(room / 2);
  const nestedKeys = concat(new Uint8Array(levels).fill(0xa1), new Uint8Array(levels + 1));
  e = await reject(withFields(document(BASE), (f) => f.set('future_field', nestedKeys)));
  assert.deepStrictEqual([e.code, e.details], ['NestingTooDeep', { context: 'payload', max: MAX_NESTING_DEPTH }]);
  const keysCose = Cose.decode(document(BASE));
  keysCose.unprotectedRaw = nestedKeys;
  e = await reject(keysCose.encode());
  assert.deepStrictEqual([e.code, e.details], ['NestingTooDeep', { context: 'unprotected header', max: MAX_NESTING_DEPTH }]);
  // Nesting exactly at the limit is accepted (the document then fails its signature only).
  const atLimit = concat(new Uint8Array(MAX_NESTING_DEPTH - 1).fill(0x81), [0x00]);
  assert.strictEqual((await reject(withFields(document(BASE), (f) => f.set('future_field', atLimit)))).code, 'CoseSignature');
  // A known field with nesting where bytes belong is a plain type error.
  e = await reject(withFields(document(BASE), (f) => f.set('nonce', nestedArrays)));
  assert.deepStrictEqual([e.code, e.details.context], ['MalformedCbor', 'nonce']);
});

// A lone break byte (0xff) is not a value: a skipper that consumed it would
// read `{0: <break>}` as a complete map where a strict decoder sees malformed
// input, and two readers of the same bytes must not disagree.
test('lone breaks in skipped values are malformed', async () => {
  const malformed = async (input, context) => {
    const e = await reject(input);
    assert.strictEqual(e.code, 'MalformedCbor', e.message);
    assert.strictEqual(e.details.context, context);
    assert.match(e.details.reason, /break/);
  };
  // The unprotected header: as a value, as a key, inside a nested array.
  for (const raw of [[0xa1, 0x00, 0xff], [0xa1, 0xff, 0x00], [0xa1, 0x00, 0x81, 0xff]]) {
    const cose = Cose.decode(document(BASE));
    cose.unprotectedRaw = Uint8Array.from(raw);
    await malformed(cose.encode(), 'unprotected header');
  }
  // An unknown payload field: the value itself, inside an array, a map, a tag.
  for (const raw of [[0xff], [0x81, 0xff], [0xa1, 0x00, 0xff], [0xc6, 0xff]]) {
    await malformed(withFields(document(BASE), (f) => f.set('future_field', Uint8Array.from(raw))), 'payload');
  }
  // The protected header: an unknown integer label's value, and a non-integer key.
  for (const header of [[0xa2, 0x01, 0x38, 0x22, 0x04, 0xff], [0xa2, 0x01, 0x38, 0x22, 0xff, 0x00]]) {
    const cose = Cose.decode(document(BASE));
    cose.protected = Uint8Array.from(header);
    await malformed(cose.encode(), 'protected header');
  }
});

test('reserved and misplaced CBOR encodings are malformed, not crashes', async () => {
  const prefix = [0x84, 0x44, 0xa1, 0x01, 0x38, 0x22];
  for (const unprotected of [[0xa1, 0x00, 0x1c], [0xa1, 0x00, 0xfc], [0xa1, 0x00, 0xff], [0xa1, 0x00, 0x1f], [0xa1, 0x00, 0xdf], [0xa1, 0x00, 0x5f, 0x60, 0xff]]) {
    const e = await reject(concat(prefix, unprotected, [0x40, 0x40]));
    oneOf(e, ['MalformedCbor'], Buffer.from(unprotected).toString('hex'));
  }
  // An invalid UTF-8 module_id.
  const e = await reject(withFields(document(BASE), (f) => f.set('module_id', new Uint8Array([0x62, 0xc3, 0x28]))));
  assert.deepStrictEqual([e.code, e.details.context], ['MalformedCbor', 'module_id']);
});

test('random megabytes are rejected', async () => {
  const rng = new SplitMix(0x5eed0001n);
  for (let mb = 1; mb <= 4; mb++) assert.strictEqual((await reject(rng.bytes(mb * 1024 * 1024))).code, 'InputTooLarge');
  // Random inputs under the cap, raw and behind a plausible COSE prefix, so
  // the parser gets past the first byte.
  const prefix = [0xd2, 0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0];
  for (let i = 0; i < 300; i++) {
    const input = rng.bytes(rng.below(MAX_DOCUMENT_LEN));
    if (i % 2 === 0) input.set(prefix.slice(0, Math.min(prefix.length, input.length)));
    await reject(input);
  }
});

test('random mutations of real documents never verify', async () => {
  const docs = documents();
  const rng = new SplitMix(0x5eed0002n);
  let tried = 0;
  for (let i = 0; i < 2000; i++) {
    const [, doc] = docs[rng.below(docs.length)];
    let input = Uint8Array.from(doc);
    const edits = 1 + rng.below(8);
    for (let k = 0; k < edits; k++) {
      const pos = rng.below(input.length);
      const kind = rng.below(3);
      if (kind === 0) input[pos] ^= 1 << rng.below(8);
      else if (kind === 1) input[pos] = Number(rng.next() & 0xffn);
      else input = input.subarray(0, Math.max(pos, 1));
    }
    if (Buffer.compare(input, doc) === 0) continue;
    await reject(input);
    tried += 1;
  }
  assert.ok(tried > 1900, `${tried} mutations tried`);
});
