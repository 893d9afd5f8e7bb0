'use strict';
// JavaScript twin of the Rust `result-signing` crate: rebuilds the BCS bytes
// of a signed /process_data response and checks its P-256 signature, with
// nothing but Node's standard library (Node >= 18).
//
//   const { verifySignedResponse } = require('./verify.js');
//   verifySignedResponse(JSON.parse(body), attestedPublicKeyHex); // throws on failure
//
// The layout is documented in ../src/lib.rs; every file in ../tests/vectors
// is checked by both implementations.
//
// A signature only vouches for the values a consumer reads if no two JSON
// values encode to the same bytes, so the shape is checked exactly as the
// Rust types would parse it (`checkShape`), before anything is encoded:
//   - exactly the keys of the Rust structs: no extra field, no missing one;
//     null only for `Option` fields;
//   - integers are JSON numbers, never strings: `intent` 0..255, `exit_code`
//     an i32, `timestamp_ms` / `execution_time_ms` 0..2^53-1. A u64 above
//     2^53-1 has no exact JS number, so such responses are rejected rather
//     than read as a neighbouring value (the server's values are millisecond
//     times, far below);
//   - strings are well-formed UTF-16: a lone surrogate would be encoded as
//     U+FFFD and so sign the same bytes as a real U+FFFD;
//   - `signature` is exactly 128 lowercase hex digits, as the Rust verifier
//     requires.

const crypto = require('node:crypto');

const INTENT_TASK_RESULT = 0;
// n / 2 for P-256: signatures with s above it are rejected (low-S only).
const HALF_ORDER = BigInt('0x7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8');
// SubjectPublicKeyInfo prefix for a compressed P-256 point (id-ecPublicKey, prime256v1).
const SPKI_P256_COMPRESSED = Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex');

// `String.prototype.isWellFormed` arrived in Node 20; the pattern is the
// same test for Node 18: a high surrogate not followed by a low one, or a low
// one not preceded by a high one.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const isWellFormed =
  typeof String.prototype.isWellFormed === 'function'
    ? (s) => s.isWellFormed()
    : (s) => !LONE_SURROGATE.test(s);

function uleb128(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return Buffer.from(out);
}

function fixed(size, write) {
  const b = Buffer.alloc(size);
  write(b);
  return b;
}

// Scalar BCS types: `is` is the whole admission test, `encode` may assume it passed.
const U8 = {
  expected: 'a u8: a JSON number, integer 0..255',
  is: (v) => Number.isInteger(v) && v >= 0 && v <= 255,
  encode: (v) => Buffer.from([v]),
};
const U64 = {
  expected: `a u64 that JS holds exactly: a JSON number, integer 0..${Number.MAX_SAFE_INTEGER} (2^53-1)`,
  is: (v) => Number.isSafeInteger(v) && v >= 0,
  encode: (v) => fixed(8, (b) => b.writeBigUInt64LE(BigInt(v))),
};
const I32 = {
  expected: 'an i32: a JSON number, integer -2^31..2^31-1',
  is: (v) => Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31,
  encode: (v) => fixed(4, (b) => b.writeInt32LE(v)),
};
const BOOL = {
  expected: 'a boolean',
  is: (v) => typeof v === 'boolean',
  encode: (v) => Buffer.from([v ? 1 : 0]),
};
const STRING = {
  expected: 'a well-formed string (no lone surrogates)',
  is: (v) => typeof v === 'string' && isWellFormed(v),
  encode: (v) => {
    const bytes = Buffer.from(v, 'utf8');
    return Buffer.concat([uleb128(bytes.length), bytes]);
  },
};
const SIGNATURE_HEX = {
  expected: '128 lowercase hex digits (64 bytes, r || s)',
  is: (v) => typeof v === 'string' && /^[0-9a-f]{128}$/.test(v),
};
const option = (inner) => ({ option: inner });
const vec = (inner) => ({ vec: inner });

// Field order is the BCS layout (../src/lib.rs): never reorder.
const TASK_RESULT = {
  struct: [
    ['task_id', STRING],
    ['task_path', STRING],
    ['task_digest', STRING],
    ['args', vec(STRING)],
    ['stdin_sha256', option(STRING)],
    ['nonce', option(STRING)],
    ['status', STRING],
    ['exit_code', option(I32)],
    ['signal', option(STRING)],
    ['stdout', STRING],
    ['stderr', STRING],
    ['stdout_truncated', BOOL],
    ['stderr_truncated', BOOL],
    ['execution_time_ms', U64],
  ],
};
const INTENT_MESSAGE = {
  struct: [
    ['intent', U8],
    ['timestamp_ms', U64],
    ['data', TASK_RESULT],
  ],
};
const SIGNED_RESPONSE = {
  struct: [
    ['response', INTENT_MESSAGE],
    ['signature', SIGNATURE_HEX],
  ],
};

/** Short description of a rejected value: never echoes a whole stdout. */
function describe(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'bigint') return `the BigInt ${v}n`;
  const text = typeof v === 'string' ? JSON.stringify(v) : String(v);
  return `${typeof v} ${text.length > 40 ? text.slice(0, 40) + '…' : text}`;
}

function reject(path, message) {
  throw new TypeError(`${path || 'signed response'}: ${message}`);
}

const join = (path, key) => (path ? `${path}.${key}` : key);

function check(v, type, path, orNull = '') {
  if (type.option) {
    if (v !== null) check(v, type.option, path, ' or null');
  } else if (type.vec) {
    if (!Array.isArray(v)) reject(path, `expected an array, got ${describe(v)}`);
    v.forEach((item, i) => check(item, type.vec, `${path}[${i}]`));
  } else if (type.struct) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      reject(path, `expected an object, got ${describe(v)}`);
    }
    const names = new Set(type.struct.map(([name]) => name));
    const unknown = Object.keys(v).find((key) => !names.has(key));
    if (unknown !== undefined) reject(path, `unknown field ${JSON.stringify(unknown)}`);
    for (const [name, fieldType] of type.struct) {
      const fieldPath = join(path, name);
      if (!Object.hasOwn(v, name)) reject(fieldPath, 'missing');
      check(v[name], fieldType, fieldPath);
    }
  } else if (!type.is(v)) {
    reject(path, `expected ${type.expected}${orNull}, got ${describe(v)}`);
  }
}

function encode(v, type) {
  if (type.option) return v === null ? Buffer.from([0]) : Buffer.concat([Buffer.from([1]), encode(v, type.option)]);
  if (type.vec) return Buffer.concat([uleb128(v.length), ...v.map((item) => encode(item, type.vec))]);
  if (type.struct) return Buffer.concat(type.struct.map(([name, fieldType]) => encode(v[name], fieldType)));
  return type.encode(v);
}

/**
 * Throws a TypeError naming the first field (e.g. `response.data.exit_code`)
 * that the Rust `SignedResponse<TaskResult>` would not parse to the same
 * value a JS reader sees.
 */
function checkShape(signed) {
  check(signed, SIGNED_RESPONSE, '');
}

/** BCS bytes of `response` = {intent, timestamp_ms, data: TaskResult}, after checking its shape. */
function signingBytes(response) {
  check(response, INTENT_MESSAGE, 'response');
  return encode(response, INTENT_MESSAGE);
}

/**
 * Throws unless `signed` has exactly the shape of a signed task result and
 * `signed.signature` is a low-S P-256 signature by the key `publicKeyHex`
 * (33-byte compressed SEC1, as attested) over its response.
 */
function verifySignedResponse(signed, publicKeyHex) {
  checkShape(signed);
  if (signed.response.intent !== INTENT_TASK_RESULT) {
    throw new Error(`intent is ${signed.response.intent}, expected ${INTENT_TASK_RESULT}`);
  }
  if (typeof publicKeyHex !== 'string' || !/^[0-9a-fA-F]{66}$/.test(publicKeyHex)) {
    throw new TypeError('public key must be 66 hex digits (compressed SEC1 P-256 point)');
  }
  const sig = Buffer.from(signed.signature, 'hex');
  if (BigInt('0x' + sig.subarray(32).toString('hex')) > HALF_ORDER) {
    throw new Error('signature is not low-S normalized');
  }
  const key = crypto.createPublicKey({
    key: Buffer.concat([SPKI_P256_COMPRESSED, Buffer.from(publicKeyHex, 'hex')]),
    format: 'der',
    type: 'spki',
  });
  const bytes = encode(signed.response, INTENT_MESSAGE);
  if (!crypto.verify('sha256', bytes, { key, dsaEncoding: 'ieee-p1363' }, sig)) {
    throw new Error('signature does not verify against the attested public key');
  }
}

module.exports = { checkShape, signingBytes, verifySignedResponse, INTENT_TASK_RESULT };
