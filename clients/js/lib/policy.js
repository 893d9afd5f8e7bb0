'use strict';
// What a verified document must additionally satisfy (freshness, debug mode,
// PCRs, nonce), and the PCR files that say which PCRs to expect. Same
// defaults, order and errors as src/attestation-verify/src/policy.rs.

const { AttestationError, ConfigError } = require('./errors.js');

/** Default `maxAgeSecs`: a document is fetched and checked in one go. */
const DEFAULT_MAX_AGE_SECS = 5 * 60;
/** Default `maxFutureSkewSecs`: tolerated clock difference with the Nitro hypervisor. */
const DEFAULT_MAX_FUTURE_SKEW_SECS = 60;
/** Largest PCR file `readPcrFile` reads. */
const MAX_PCR_FILE_LEN = 64 * 1024;

const PCR_FORMATS =
  'accepted formats: nitro-cli JSON ({"Measurements": {"PCR0": "<hex>", …}} or the flat {"PCR0": "<hex>", …}) ' +
  'or eif_build lines ("<hex> PCR0"); `nitro-cli describe-eif --eif-path <image.eif>` prints them for an image';

const toHex = (bytes) => Buffer.from(bytes).toString('hex');

/** Hex (either case, even length) to bytes; null if it is not hex. */
function fromHex(text) {
  return typeof text === 'string' && /^(?:[0-9a-fA-F]{2})*$/.test(text) ? Uint8Array.from(Buffer.from(text, 'hex')) : null;
}

/** Bytes from a Uint8Array or a hex string, or throws TypeError naming `what`. */
function bytesOf(value, what) {
  if (value instanceof Uint8Array) return value;
  const bytes = fromHex(value);
  if (bytes === null) throw new TypeError(`${what} must be a Uint8Array or a hex string`);
  return bytes;
}

function checkedPcr(index, value) {
  if (!Number.isInteger(index) || index < 0 || index >= 32) throw new ConfigError('PcrIndexOutOfRange', { index });
  const bytes = bytesOf(value, `PCR${index}`);
  if (![32, 48, 64].includes(bytes.length)) throw new ConfigError('PcrLength', { index, len: bytes.length });
  return bytes;
}

/**
 * Expected PCRs as a Map index -> bytes, from a Map or a plain object whose
 * keys are indices ("0", 1, …) and values hex strings or bytes.
 */
function expectedPcrs(pcrs) {
  const entries = pcrs instanceof Map ? [...pcrs] : Object.entries(pcrs);
  const out = new Map();
  for (const [key, value] of entries) {
    const index = typeof key === 'number' ? key : /^\d+$/.test(key) ? Number(key) : NaN;
    if (Number.isNaN(index)) throw new ConfigError('PcrFile', { reason: `bad PCR index ${JSON.stringify(key)}` });
    out.set(index, checkedPcr(index, value));
  }
  return new Map([...out].sort((a, b) => a[0] - b[0]));
}

const pcrFileError = (reason) => new ConfigError('PcrFile', { reason });

/** `PCRn` key -> n, or a ConfigError. Accepts what Rust's `u64::from_str` does. */
function pcrIndexOfKey(key, digits) {
  if (!/^\+?\d+$/.test(digits)) throw pcrFileError(`bad PCR key ${JSON.stringify(key)}`);
  const index = BigInt(digits);
  if (index >= 2n ** 64n) throw pcrFileError(`bad PCR key ${JSON.stringify(key)}`);
  if (index >= 32n) throw new ConfigError('PcrIndexOutOfRange', { index: index.toString() });
  return Number(index);
}

/** nitro-cli's measurements JSON: `{"PCR0": "hex", …}`, or the same under "Measurements". */
function readNitroJson(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw pcrFileError(`${e.message}; ${PCR_FORMATS}`);
  }
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  let object = value;
  if (!isObject(object)) throw pcrFileError(`not a JSON object; ${PCR_FORMATS}`);
  if (Object.hasOwn(object, 'Measurements')) {
    object = object.Measurements;
    if (!isObject(object)) throw pcrFileError(`"Measurements" is not an object; ${PCR_FORMATS}`);
  }
  const pcrs = new Map();
  for (const [key, hex] of Object.entries(object)) {
    if (!key.startsWith('PCR')) continue; // e.g. HashAlgorithm
    const index = pcrIndexOfKey(key, key.slice(3));
    if (typeof hex !== 'string') throw pcrFileError(`${key} is not a string`);
    const bytes = fromHex(hex);
    if (bytes === null) throw pcrFileError(`${key} is not hex`);
    pcrs.set(index, checkedPcr(index, bytes));
  }
  if (pcrs.size === 0) throw pcrFileError(`no PCRn entries; ${PCR_FORMATS}`);
  return pcrs;
}

/** eif_build's text: one `<hex> PCRn` per line; blank lines are ignored. */
function readEifBuildLines(text) {
  const pcrs = new Map();
  const lines = text.split(/\r?\n/);
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const m = /^\s*([0-9a-fA-F]+)\s+PCR(\S+)\s*$/.exec(line);
    if (!m) {
      const shown = line.length > 60 ? `${line.slice(0, 60)}…` : line;
      throw pcrFileError(`line ${i + 1} is not "<hex> PCRn": ${JSON.stringify(shown)}; ${PCR_FORMATS}`);
    }
    const index = pcrIndexOfKey(`PCR${m[2]}`, m[2]);
    const bytes = fromHex(m[1]);
    if (bytes === null) throw pcrFileError(`PCR${index} on line ${i + 1} is not hex`);
    if (pcrs.has(index)) throw pcrFileError(`PCR${index} appears twice`);
    pcrs.set(index, checkedPcr(index, bytes));
  });
  if (pcrs.size === 0) throw pcrFileError(`no PCRn entries; ${PCR_FORMATS}`);
  return pcrs;
}

/**
 * Reads a PCR file as the Rust client does: nitro-cli's measurements JSON
 * (nested under "Measurements" or flat) or eif_build's `<hex> PCRn` lines.
 * Returns a Map index -> bytes, sorted by index. Throws ConfigError.
 *
 * @param {string} text
 */
function readPcrFile(text) {
  if (typeof text !== 'string') throw new TypeError('PCR file contents must be a string');
  const size = Buffer.byteLength(text, 'utf8');
  if (size > MAX_PCR_FILE_LEN) throw pcrFileError(`${size} bytes, more than ${MAX_PCR_FILE_LEN}`);
  const trimmed = text.trim();
  if (trimmed === '') throw pcrFileError(`empty file; ${PCR_FORMATS}`);
  const pcrs = trimmed.startsWith('{') || trimmed.startsWith('[') ? readNitroJson(text) : readEifBuildLines(text);
  return new Map([...pcrs].sort((a, b) => a[0] - b[0]));
}

/**
 * The policy from verifyAttestation's options, validated:
 * `{ at, maxAgeMs, maxFutureSkewMs, pcrs, nonce, allowDebug }`.
 */
function resolvePolicy(options = {}) {
  const { at = 'now', maxAgeSecs = DEFAULT_MAX_AGE_SECS, maxFutureSkewSecs = DEFAULT_MAX_FUTURE_SKEW_SECS } = options;
  if (!(at === 'now' || at === 'document' || (Number.isSafeInteger(at) && at >= 0))) {
    throw new TypeError("`at` must be 'now', 'document' or a time in ms since the UNIX epoch");
  }
  const seconds = (v, name) => {
    if (!(typeof v === 'number' && v >= 0 && Number.isFinite(v))) throw new TypeError(`\`${name}\` must be a non-negative number of seconds`);
    return Math.round(v * 1000);
  };
  return {
    at,
    maxAgeMs: maxAgeSecs === null ? null : seconds(maxAgeSecs, 'maxAgeSecs'),
    maxFutureSkewMs: seconds(maxFutureSkewSecs, 'maxFutureSkewSecs'),
    pcrs: options.pcrs == null ? new Map() : expectedPcrs(options.pcrs),
    nonce: options.nonce == null ? null : bytesOf(options.nonce, 'nonce'),
    allowDebug: options.allowDebug === true,
  };
}

function resolveCheckTime(policy, timestampMs) {
  if (policy.at === 'now') return Date.now();
  if (policy.at === 'document') return timestampMs;
  return policy.at;
}

/** Checks everything except the signatures, which the caller has already verified. */
function checkPolicy(policy, fields, atMs, debug) {
  const timestampMs = fields.timestamp_ms;
  if (timestampMs > atMs + policy.maxFutureSkewMs) {
    throw new AttestationError('DocumentFromFuture', { timestamp_ms: timestampMs, at_ms: atMs, max_skew_ms: policy.maxFutureSkewMs });
  }
  if (policy.maxAgeMs !== null) {
    const ageMs = Math.max(0, atMs - timestampMs);
    if (ageMs > policy.maxAgeMs) {
      throw new AttestationError('DocumentTooOld', { timestamp_ms: timestampMs, at_ms: atMs, age_ms: ageMs, max_age_ms: policy.maxAgeMs });
    }
  }
  if (debug && !policy.allowDebug) throw new AttestationError('DebugMode');
  for (const [index, expected] of policy.pcrs) {
    const got = fields.pcrs.get(index);
    if (!got) throw new AttestationError('PcrMissing', { index });
    if (toHex(got) !== toHex(expected)) {
      throw new AttestationError('PcrMismatch', { index, expected: toHex(expected), got: toHex(got) });
    }
  }
  if (policy.nonce !== null && (fields.nonce === null || toHex(fields.nonce) !== toHex(policy.nonce))) {
    throw new AttestationError('NonceMismatch', { expected: toHex(policy.nonce), got: fields.nonce === null ? null : toHex(fields.nonce) });
  }
}

module.exports = {
  readPcrFile,
  expectedPcrs,
  resolvePolicy,
  resolveCheckTime,
  checkPolicy,
  fromHex,
  toHex,
  DEFAULT_MAX_AGE_SECS,
  DEFAULT_MAX_FUTURE_SKEW_SECS,
  MAX_PCR_FILE_LEN,
};
