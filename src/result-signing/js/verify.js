'use strict';
// JavaScript twin of the Rust `result-signing` crate: rebuilds the BCS bytes
// of a signed /process_data response and checks its P-256 signature, with
// nothing but Node's standard library (Node >= 18).
//
//   const { verifySignedResponse } = require('./verify.js');
//   verifySignedResponse(responseJson, attestedPublicKeyHex); // throws on failure
//
// The layout is documented in ../src/lib.rs; ../tests/vectors holds the
// vector both implementations are tested against.

const crypto = require('node:crypto');

const INTENT_TASK_RESULT = 0;
// n / 2 for P-256: signatures with s above it are rejected (low-S only).
const HALF_ORDER = BigInt('0x7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8');
// SubjectPublicKeyInfo prefix for a compressed P-256 point (id-ecPublicKey, prime256v1).
const SPKI_P256_COMPRESSED = Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex');

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

function u64le(n) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function str(s) {
  if (typeof s !== 'string') throw new TypeError(`expected a string, got ${typeof s}`);
  const bytes = Buffer.from(s, 'utf8');
  return Buffer.concat([uleb128(bytes.length), bytes]);
}

function optStr(s) {
  return s === null || s === undefined ? Buffer.from([0]) : Buffer.concat([Buffer.from([1]), str(s)]);
}

function optI32(n) {
  if (n === null || n === undefined) return Buffer.from([0]);
  const b = Buffer.alloc(5);
  b[0] = 1;
  b.writeInt32LE(n, 1);
  return b;
}

function bool(v) {
  if (typeof v !== 'boolean') throw new TypeError(`expected a boolean, got ${typeof v}`);
  return Buffer.from([v ? 1 : 0]);
}

/** BCS bytes of `response` = {intent, timestamp_ms, data: TaskResult}. */
function signingBytes(response) {
  const d = response.data;
  if (!Number.isInteger(response.intent) || response.intent < 0 || response.intent > 255) {
    throw new TypeError('intent must be a u8');
  }
  return Buffer.concat([
    Buffer.from([response.intent]),
    u64le(response.timestamp_ms),
    str(d.task_id),
    str(d.task_path),
    str(d.task_digest),
    Buffer.concat([uleb128(d.args.length), ...d.args.map(str)]),
    optStr(d.stdin_sha256),
    optStr(d.nonce),
    str(d.status),
    optI32(d.exit_code),
    optStr(d.signal),
    str(d.stdout),
    str(d.stderr),
    bool(d.stdout_truncated),
    bool(d.stderr_truncated),
    u64le(d.execution_time_ms),
  ]);
}

/**
 * Throws unless `signed.signature` is a low-S P-256 signature by the key
 * `publicKeyHex` (33-byte compressed SEC1, as attested) over the response.
 */
function verifySignedResponse(signed, publicKeyHex) {
  if (signed.response.intent !== INTENT_TASK_RESULT) throw new Error('wrong intent');
  const sig = Buffer.from(signed.signature, 'hex');
  if (sig.length !== 64 || sig.toString('hex') !== signed.signature.toLowerCase()) {
    throw new Error('signature is not 64 bytes of hex');
  }
  if (BigInt('0x' + sig.subarray(32).toString('hex')) > HALF_ORDER) {
    throw new Error('signature is not low-S normalized');
  }
  const key = crypto.createPublicKey({
    key: Buffer.concat([SPKI_P256_COMPRESSED, Buffer.from(publicKeyHex, 'hex')]),
    format: 'der',
    type: 'spki',
  });
  const ok = crypto.verify('sha256', signingBytes(signed.response), { key, dsaEncoding: 'ieee-p1363' }, sig);
  if (!ok) throw new Error('signature does not verify against the attested public key');
}

module.exports = { signingBytes, verifySignedResponse, INTENT_TASK_RESULT };
