// The signed answer of `POST /process_data`: rebuilds the BCS bytes of a
// signed response and checks its P-256 signature (`verifySignedResponse`),
// then that the signed data answers exactly the request (`verifyResult`),
// on Web Crypto, in browsers and Node alike. Both signed forms: the full one
// (intent 0, texts signed) and the compact one (intent 1, the texts' SHA-256
// and lengths signed, the texts beside the signed message). The one JavaScript
// implementation of the result format; the layout is documented in
// src/result-signing/src/lib.rs, and every file in
// src/result-signing/tests/vectors is checked by both implementations.
//
// A signature only vouches for the values a consumer reads if no two JSON
// values encode to the same bytes, so the shape is checked exactly as the
// Rust types would parse it (`checkShape`), before anything is encoded:
//   - exactly the keys of the Rust structs: no extra field, no missing one;
//     null only for `Option` fields;
//   - integers are JSON numbers, never strings: `intent` 0..255, `exit_code`
//     an i32, `egress[].port` a u16, `timestamp_ms` / `execution_time_ms` /
//     `resources.*` and the `egress` counts 0..2^53-1. A u64 above
//     2^53-1 has no exact JS number, so such responses are rejected rather
//     than read as a neighbouring value (the server's values are millisecond
//     times, far below);
//   - strings are well-formed UTF-16: a lone surrogate would be encoded as
//     U+FFFD and so sign the same bytes as a real U+FFFD;
//   - `signature` is exactly 128 lowercase hex digits, as the Rust verifier
//     requires.

import { ResultError, rustDebugList } from './errors.js';
import { toHex, fromHex, utf8, concatBytes, bigFromBytes } from './bytes.js';
import { sha256Hex, importEcdsaKey, verifyEcdsa } from './webcrypto.js';

const INTENT_TASK_RESULT = 0;
const INTENT_TASK_RESULT_COMPACT = 1;
// The P-256 group order n; signatures with s above n / 2 are rejected (low-S only).
const ORDER = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551');
const HALF_ORDER = ORDER >> 1n;

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
  return Uint8Array.from(out);
}

function fixed(size, write) {
  const b = new Uint8Array(size);
  write(new DataView(b.buffer));
  return b;
}

// Scalar BCS types: `is` is the whole admission test, `encode` may assume it passed.
const U8 = {
  expected: 'a u8: a JSON number, integer 0..255',
  is: (v) => Number.isInteger(v) && v >= 0 && v <= 255,
  encode: (v) => Uint8Array.of(v),
};
const U64 = {
  expected: `a u64 that JS holds exactly: a JSON number, integer 0..${Number.MAX_SAFE_INTEGER} (2^53-1)`,
  is: (v) => Number.isSafeInteger(v) && v >= 0,
  encode: (v) => fixed(8, (b) => b.setBigUint64(0, BigInt(v), true)),
};
const U16 = {
  expected: 'a u16: a JSON number, integer 0..65535',
  is: (v) => Number.isInteger(v) && v >= 0 && v <= 65535,
  encode: (v) => fixed(2, (b) => b.setUint16(0, v, true)),
};
const I32 = {
  expected: 'an i32: a JSON number, integer -2^31..2^31-1',
  is: (v) => Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31,
  encode: (v) => fixed(4, (b) => b.setInt32(0, v, true)),
};
const BOOL = {
  expected: 'a boolean',
  is: (v) => typeof v === 'boolean',
  encode: (v) => Uint8Array.of(v ? 1 : 0),
};
const STRING = {
  expected: 'a well-formed string (no lone surrogates)',
  is: (v) => typeof v === 'string' && isWellFormed(v),
  encode: (v) => {
    const bytes = utf8(v);
    return concatBytes([uleb128(bytes.length), bytes]);
  },
};
const SIGNATURE_HEX = {
  expected: '128 lowercase hex digits (64 bytes, r || s)',
  is: (v) => typeof v === 'string' && /^[0-9a-f]{128}$/.test(v),
};
const option = (inner) => ({ option: inner });
const vec = (inner) => ({ vec: inner });

const RESOURCES = {
  struct: [
    ['cpu_time_ms', U64],
    ['peak_memory_bytes', U64],
  ],
};
// One destination a task reached (docs/egress.md).
const EGRESS_ENTRY = {
  struct: [
    ['host', STRING],
    ['port', U16],
    ['connections', U64],
    ['bytes_out', U64],
    ['bytes_in', U64],
  ],
};
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
    ['limit', option(STRING)],
    ['resources', option(RESOURCES)],
    ['egress', vec(EGRESS_ENTRY)],
  ],
};
const SHA256_HEX = {
  expected: '64 lowercase hex digits (a SHA-256)',
  is: (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v),
  encode: STRING.encode,
};
/**
 * The compact form: TASK_RESULT with each text replaced by its SHA-256 and
 * byte length (`compactOf`), every other field in its place.
 */
const COMPACT_TASK_RESULT = {
  struct: TASK_RESULT.struct.flatMap(([name, type]) =>
    name === 'stdout' || name === 'stderr'
      ? [
          [`${name}_sha256`, SHA256_HEX],
          [`${name}_len`, U64],
        ]
      : [[name, type]],
  ),
};
const intentMessage = (data) => ({
  struct: [
    ['intent', U8],
    ['timestamp_ms', U64],
    ['data', data],
  ],
});
const INTENT_MESSAGE = intentMessage(TASK_RESULT);
const COMPACT_INTENT_MESSAGE = intentMessage(COMPACT_TASK_RESULT);
const SIGNED_RESPONSE = {
  struct: [
    ['response', INTENT_MESSAGE],
    ['signature', SIGNATURE_HEX],
  ],
};
const COMPACT_SIGNED_RESPONSE = {
  struct: [
    ['response', COMPACT_INTENT_MESSAGE],
    ['signature', SIGNATURE_HEX],
    ['stdout', STRING],
    ['stderr', STRING],
  ],
};
/** Which form a response is, told by its top-level fields (the Rust `SignedTaskResult`). */
const formOf = (signed) =>
  signed !== null && typeof signed === 'object' && Object.hasOwn(signed, 'stdout') ? COMPACT_SIGNED_RESPONSE : SIGNED_RESPONSE;

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
  if (type.option) return v === null ? Uint8Array.of(0) : concatBytes([Uint8Array.of(1), encode(v, type.option)]);
  if (type.vec) return concatBytes([uleb128(v.length), ...v.map((item) => encode(item, type.vec))]);
  if (type.struct) return concatBytes(type.struct.map(([name, fieldType]) => encode(v[name], fieldType)));
  return type.encode(v);
}

/**
 * Throws a TypeError naming the first field (e.g. `response.data.exit_code`)
 * that the Rust `SignedResponse<TaskResult>` (or, with top-level `stdout`
 * and `stderr`, `CompactSignedResponse`) would not parse to the same value a
 * JS reader sees.
 */
function checkShape(signed) {
  check(signed, formOf(signed), '');
}

/**
 * BCS bytes of `response` = {intent, timestamp_ms, data}, after checking its
 * shape: a full TaskResult, or a compact one (with `stdout_sha256`).
 */
function signingBytes(response) {
  const compact = response !== null && typeof response === 'object' && response.data !== null && typeof response.data === 'object' && Object.hasOwn(response.data, 'stdout_sha256');
  const type = compact ? COMPACT_INTENT_MESSAGE : INTENT_MESSAGE;
  check(response, type, 'response');
  return encode(response, type);
}

/**
 * The compact form of a full TaskResult: the one mapping, field by field in
 * the full layout's order, each text replaced by its SHA-256 and length.
 */
async function compactOf(data) {
  const out = {};
  for (const [name] of TASK_RESULT.struct) {
    if (name === 'stdout' || name === 'stderr') {
      const bytes = utf8(data[name]);
      out[`${name}_sha256`] = await sha256Hex(bytes);
      out[`${name}_len`] = bytes.length;
    } else {
      out[name] = data[name];
    }
  }
  return out;
}

/**
 * The attested key as a KeyObject, from a SEC1 P-256 point (33-byte
 * compressed or 65-byte uncompressed), given as bytes or hex. Throws
 * TypeError if it is not one.
 */
async function p256PublicKey(publicKey) {
  const sec1 =
    typeof publicKey === 'string' && /^(?:[0-9a-fA-F]{2})*$/.test(publicKey)
      ? fromHex(publicKey)
      : publicKey instanceof Uint8Array
        ? Uint8Array.from(publicKey)
        : null;
  const pointTag = sec1 && sec1[0];
  if (!sec1 || !(sec1.length === 33 ? pointTag === 2 || pointTag === 3 : sec1.length === 65 && pointTag === 4)) {
    throw new TypeError('public key must be a P-256 SEC1 point: 33 bytes compressed or 65 uncompressed (66 or 130 hex digits)');
  }
  const key = await importEcdsaKey('P-256', sec1);
  if (key === null) throw new TypeError('public key is not a point on P-256');
  return key;
}

/**
 * Signature checks of the Rust `SignedResponse::verify` (and, for the
 * compact form, `CompactSignedResponse::verify`), after the JS shape check.
 * Returns the whole result as `{intent, timestamp_ms, data}` with the full
 * texts, or a problem string.
 */
async function signatureProblem(signed, key) {
  const compact = formOf(signed) === COMPACT_SIGNED_RESPONSE;
  const intent = compact ? INTENT_TASK_RESULT_COMPACT : INTENT_TASK_RESULT;
  if (signed.response.intent !== intent) {
    return { problem: `intent is ${signed.response.intent}, expected ${intent}` };
  }
  const sig = fromHex(signed.signature);
  const r = bigFromBytes(sig.subarray(0, 32));
  const s = bigFromBytes(sig.subarray(32));
  if (r === 0n || r >= ORDER || s === 0n || s >= ORDER) {
    return { problem: 'signature is not 128 lowercase hex digits (64 bytes, r || s)' };
  }
  if (s > HALF_ORDER) return { problem: 'signature is not low-S normalized' };
  const bytes = encode(signed.response, compact ? COMPACT_INTENT_MESSAGE : INTENT_MESSAGE);
  if (!(await verifyEcdsa(key, 'SHA-256', sig, bytes))) {
    return { problem: 'signature does not verify against the attested public key' };
  }
  if (!compact) return { message: signed.response };
  // The texts beside a compact message must be the ones whose SHA-256 and
  // length it signs; then the whole result is theirs.
  const d = signed.response.data;
  const full = {};
  for (const [name] of TASK_RESULT.struct) {
    full[name] = name === 'stdout' || name === 'stderr' ? signed[name] : d[name];
  }
  const again = await compactOf(full);
  for (const stream of ['stdout', 'stderr']) {
    if (again[`${stream}_sha256`] !== d[`${stream}_sha256`] || again[`${stream}_len`] !== d[`${stream}_len`]) {
      return { problem: `the returned ${stream} does not match the signed ${stream}_sha256 and ${stream}_len` };
    }
  }
  return { message: { intent: signed.response.intent, timestamp_ms: signed.response.timestamp_ms, data: full } };
}

/**
 * Resolves unless `signed` has exactly the shape of a signed task result
 * (either form) and `signed.signature` is a low-S P-256 signature by
 * `publicKey` (SEC1, compressed as attested or uncompressed; bytes or hex)
 * over its response, and, in the compact form, the returned texts have the
 * signed SHA-256 and lengths. Resolves to the whole result
 * `{intent, timestamp_ms, data}`. Shape and key errors are TypeErrors,
 * signature failures Errors.
 */
async function verifySignedResponse(signed, publicKey) {
  checkShape(signed);
  const key = await p256PublicKey(publicKey);
  const { problem, message } = await signatureProblem(signed, key);
  if (problem) throw new Error(problem);
  return message;
}

/** How far the server's clock may be from ours, by default. */
const DEFAULT_CLOCK_SKEW_MS = 60 * 1000;

/**
 * Task paths as the server reports them: no `.` components or empty
 * segments. Used only to compare what was asked with what was signed.
 */
function normalizeTaskPath(path) {
  return path
    .split('/')
    .filter((c) => c !== '' && c !== '.')
    .join('/');
}

function checkExpect(expect) {
  if (expect === null || typeof expect !== 'object') throw new TypeError('`expect` must be an object');
  const { taskPath, args = [], stdin = null, nonce, taskDigest = null, egress = null, notBeforeMs, notAfterMs, clockSkewMs = DEFAULT_CLOCK_SKEW_MS } = expect;
  if (typeof taskPath !== 'string') throw new TypeError('`expect.taskPath` must be a string');
  if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) throw new TypeError('`expect.args` must be an array of strings');
  if (!(stdin === null || typeof stdin === 'string' || stdin instanceof Uint8Array)) {
    throw new TypeError('`expect.stdin` must be a string, bytes or null');
  }
  if (typeof nonce !== 'string') throw new TypeError('`expect.nonce` must be the hex nonce sent');
  if (!(taskDigest === null || typeof taskDigest === 'string')) throw new TypeError('`expect.taskDigest` must be a string or null');
  if (!(egress === null || (Array.isArray(egress) && egress.every((e) => typeof e === 'string')))) {
    throw new TypeError('`expect.egress` must be an array of "host:port" strings or null');
  }
  for (const [name, v] of [['notBeforeMs', notBeforeMs], ['notAfterMs', notAfterMs], ['clockSkewMs', clockSkewMs]]) {
    if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`\`expect.${name}\` must be a non-negative integer (ms)`);
  }
  return { taskPath, args, stdin, nonce, taskDigest, egress, notBeforeMs, notAfterMs, clockSkewMs };
}

/**
 * Verifies a signed `/process_data` answer in either form: its shape, the
 * signature under the attested `publicKey` (low-S; intent 0 for the full
 * form, 1 for the compact form, whose returned texts must also have the
 * signed SHA-256 and lengths), then that the signed data
 * answers exactly the request `expect` describes: nonce, task path (after
 * normalization), args, SHA-256 of stdin, task digest (if given), every
 * `egress` entry among the manifest's `host:port`s for the task (if given), a status
 * consistent with the exit code, and a timestamp within
 * [notBeforeMs - clockSkewMs, notAfterMs + clockSkewMs]. Same checks, order
 * and messages as the Rust client's `verify_result`.
 *
 * @param {object} response the parsed JSON body: `{ response, signature }`, or `{ response, signature, stdout, stderr }` (compact)
 * @param {{ publicKey: string|Uint8Array, expect: object }} options
 * @returns {Promise<object>} the whole result `{intent, timestamp_ms, data}`, texts included
 * @throws {ResultError} with `code` 'Signature', 'Mismatch', 'Stale' or 'Inconsistent'
 */
async function verifyResult(response, { publicKey, expect } = {}) {
  const want = checkExpect(expect);
  const key = await p256PublicKey(publicKey);
  try {
    checkShape(response);
  } catch (e) {
    throw new ResultError('Signature', {}, e);
  }
  const { problem, message } = await signatureProblem(response, key);
  if (problem) throw new ResultError('Signature', {}, new Error(problem));

  const d = message.data;
  const mismatch = (field, expected, got) => new ResultError('Mismatch', { field, expected, got });
  if (d.nonce !== want.nonce) throw mismatch('nonce', want.nonce, d.nonce ?? 'none');
  const wantPath = normalizeTaskPath(want.taskPath);
  if (d.task_path !== wantPath) throw mismatch('task_path', wantPath, d.task_path);
  if (d.args.length !== want.args.length || d.args.some((a, i) => a !== want.args[i])) {
    throw mismatch('args', rustDebugList(want.args), rustDebugList(d.args));
  }
  const wantStdin = want.stdin === null ? null : await sha256Hex(typeof want.stdin === 'string' ? utf8(want.stdin) : want.stdin);
  if (d.stdin_sha256 !== wantStdin) throw mismatch('stdin_sha256', wantStdin ?? 'none', d.stdin_sha256 ?? 'none');
  if (want.taskDigest !== null && d.task_digest !== want.taskDigest) {
    throw mismatch('task_digest', want.taskDigest, d.task_digest);
  }
  if (want.egress !== null) {
    const undeclared = d.egress.find((e) => !want.egress.includes(`${e.host}:${e.port}`));
    if (undeclared) throw mismatch('egress', `one of ${rustDebugList(want.egress)}`, `${undeclared.host}:${undeclared.port}`);
  }
  const success = d.status === 'success';
  if (success !== (d.exit_code === 0) || !(success || d.status === 'failed')) {
    throw new ResultError('Inconsistent', { status: d.status, exit_code: d.exit_code });
  }
  const fromMs = Math.max(0, want.notBeforeMs - want.clockSkewMs);
  const toMs = want.notAfterMs + want.clockSkewMs;
  const ts = message.timestamp_ms;
  if (ts < fromMs || ts > toMs) throw new ResultError('Stale', { timestamp_ms: ts, from_ms: fromMs, to_ms: toMs });
  return message;
}

/** The signed response with keys in the Rust structs' order, as the Rust CLI prints it. */
function canonicalSignedResponse(signed) {
  const order = (v, type) => {
    if (type.option) return v === null ? null : order(v, type.option);
    if (type.vec) return v.map((item) => order(item, type.vec));
    if (type.struct) return Object.fromEntries(type.struct.map(([name, t]) => [name, order(v[name], t)]));
    return v;
  };
  return order(signed, formOf(signed));
}

export {
  checkShape,
  signingBytes,
  verifySignedResponse,
  verifyResult,
  normalizeTaskPath,
  canonicalSignedResponse,
  p256PublicKey,
  compactOf,
  INTENT_TASK_RESULT,
  INTENT_TASK_RESULT_COMPACT,
  DEFAULT_CLOCK_SKEW_MS,
};
