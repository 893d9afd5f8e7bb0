// What a verified document must additionally satisfy (freshness, debug mode,
// PCRs, nonce), and the PCR files that say which PCRs to expect. Same
// defaults, order and errors as src/attestation-verify/src/policy.rs.

import { AttestationError, ConfigError, rustDebug } from './errors.js';
import { toHex, fromHex, utf8 } from './bytes.js';

/** Default `maxAgeSecs`: a document is fetched and checked in one go. */
const DEFAULT_MAX_AGE_SECS = 5 * 60;
/** Default `maxFutureSkewSecs`: tolerated clock difference with the Nitro hypervisor. */
const DEFAULT_MAX_FUTURE_SKEW_SECS = 60;
/** Largest PCR file `readPcrFile` reads, in bytes. Real ones are under 1 KiB. */
const MAX_PCR_FILE_LEN = 64 * 1024;
/** PCR0 … PCR8 are the registers a Nitro image build measures. */
const PCR_NAME = /^PCR([0-8])$/;
/** SHA-384, the only hash Nitro uses for PCRs, in hex digits. */
const PCR_HEX_LEN = 96;


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
    if (Number.isNaN(index)) throw new TypeError(`bad PCR index ${JSON.stringify(key)}: PCR sets are keyed by index (0-31)`);
    out.set(index, checkedPcr(index, value));
  }
  return new Map([...out].sort((a, b) => a[0] - b[0]));
}

/** How each accepted PCR file format is named in messages (as the Rust `PcrFileFormat` displays). */
const PCR_FILE_FORMATS = {
  NitroCliJson: 'nitro-cli JSON ({"Measurements": {...}})',
  MeasurementsJson: 'measurements JSON ({"PCR0": ...})',
  EifBuildText: 'eif_build text (<hex> PCRn lines)',
};

const refuse = (reason) => new ConfigError('PcrFile', { reason });

/** `{name} is not hex: …` with the hex crate's wording, or the bytes. */
function pcrValue(name, hexValue) {
  const chars = [...hexValue];
  if (chars.length !== PCR_HEX_LEN) {
    throw refuse(`${name} has ${chars.length} characters; a SHA-384 PCR is ${PCR_HEX_LEN} hex digits`);
  }
  const bad = chars.findIndex((c) => !/^[0-9a-fA-F]$/.test(c));
  if (bad !== -1) throw refuse(`${name} is not hex: Invalid character ${rustDebugChar(chars[bad])} at position ${bad}`);
  return fromHex(hexValue);
}

/** Rust's `{:?}` of a char: quoted with `'`, which (unlike `"`) is escaped inside. */
const rustDebugChar = (c) => (c === "'" ? "'\\''" : `'${rustDebug(c).slice(1, -1).replace('\\"', '"')}'`);

function requireSome(pcrs) {
  if (pcrs.size === 0) throw refuse('no PCR0-PCR8 values');
  return new Map([...pcrs].sort((a, b) => a[0] - b[0]));
}

function measurements(object) {
  const pcrs = new Map();
  // serde_json's map (no preserve_order) visits members in key order: so does this,
  // so that a file with several faults is refused for the same one.
  for (const key of Object.keys(object).sort()) {
    const value = object[key];
    if (key === 'HashAlgorithm') {
      if (!(typeof value === 'string' && value.startsWith('Sha384'))) throw refuse(`HashAlgorithm is ${JSON.stringify(value)}, not Sha384`);
      continue;
    }
    const m = PCR_NAME.exec(key);
    if (!m) throw refuse(`unexpected member ${rustDebug(key)} (a measurements object has only HashAlgorithm and PCR0-PCR8)`);
    if (typeof value !== 'string') throw refuse(`${key} is ${JSON.stringify(value)}, not a hex string`);
    pcrs.set(Number(m[1]), pcrValue(key, value));
  }
  return requireSome(pcrs);
}

function fromJson(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw refuse(`not valid JSON: ${e.message}`);
  }
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(value)) throw refuse('not a JSON object');
  if (!Object.hasOwn(value, 'Measurements')) return { pcrs: measurements(value), format: 'MeasurementsJson' };
  if (!isObject(value.Measurements)) throw refuse('"Measurements" is not an object');
  return { pcrs: measurements(value.Measurements), format: 'NitroCliJson' };
}

function notAPcrLine(number, line) {
  const chars = [...line];
  const shown = chars.slice(0, 60).join('');
  return refuse(`line ${number} is not \`<hex> PCRn\`: ${rustDebug(shown)}${chars.length > 60 ? '…' : ''}`);
}

function fromEifBuildText(text) {
  const pcrs = new Map();
  text.split('\n').forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const fields = line.split(/[ \t]/).filter((f) => f !== '');
    if (fields.length === 0) return;
    if (fields.length !== 2) throw notAPcrLine(i + 1, line);
    const [hexValue, name] = fields;
    const m = PCR_NAME.exec(name);
    if (!m) throw notAPcrLine(i + 1, line);
    const value = pcrValue(name, hexValue);
    const index = Number(m[1]);
    if (pcrs.has(index)) throw refuse(`${name} appears twice (line ${i + 1})`);
    pcrs.set(index, value);
  });
  return { pcrs: requireSome(pcrs), format: 'EifBuildText' };
}

/**
 * Reads a PCR file as the Rust client does (src/attestation-verify/src/pcr_file.rs
 * specifies the formats): at most 64 KiB of UTF-8; if its first non-whitespace
 * character is `{`, nitro-cli's JSON (`{"Measurements": {…}, …}`, as
 * `nitro-cli describe-eif` and `build-enclave` print it) or the measurements
 * object alone; otherwise eif_build's `--pcrs_output` text, one
 * `<96 hex digits> PCRn` line per register. A measurements object holds only
 * `HashAlgorithm` ("Sha384…") and PCR0-PCR8, each 96 hex digits.
 *
 * @param {string|Uint8Array} file
 * @returns {{ pcrs: Map<number, Uint8Array>, format: 'NitroCliJson'|'MeasurementsJson'|'EifBuildText', description: string }}
 * @throws {ConfigError} PcrFile, saying what was wrong and what is accepted
 */
function readPcrFile(file) {
  if (!(typeof file === 'string' || file instanceof Uint8Array)) throw new TypeError('a PCR file is a string or bytes');
  const size = typeof file === 'string' ? utf8(file).length : file.length;
  if (size > MAX_PCR_FILE_LEN) throw refuse(`${size} bytes, more than the ${MAX_PCR_FILE_LEN}-byte limit`);
  let text = file;
  if (typeof file !== 'string') {
    try {
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(file);
    } catch {
      throw refuse('not UTF-8 text');
    }
  }
  const { pcrs, format } = text.replace(/^[ \t\r\n]+/, '').startsWith('{') ? fromJson(text) : fromEifBuildText(text);
  return { pcrs, format, description: PCR_FILE_FORMATS[format] };
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

export {
  readPcrFile,
  PCR_FILE_FORMATS,
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
