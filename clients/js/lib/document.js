// Parsing of the COSE_Sign1 envelope and the NSM attestation payload: the
// same narrow shapes, limits, contexts and errors as the Rust parser
// (src/attestation-verify/src/document.rs). Everything here runs on
// untrusted bytes before any signature is checked.

import { Decoder, encodeHead, encodeBytes, encodeText } from './cbor.js';
import { AttestationError } from './errors.js';
import { concatBytes } from './bytes.js';

/** Largest document accepted, in bytes. Real documents are under 16 KiB. */
const MAX_DOCUMENT_LEN = 64 * 1024;
/** Largest `public_key`, `user_data` or `nonce`, as the NSM API defines them. */
const MAX_OPTIONAL_FIELD_LEN = 1024;
/** Deepest nesting tolerated inside a value the parser does not interpret. */
const MAX_NESTING_DEPTH = 16;
/** Unknown payload fields are tolerated (AWS may add fields) up to this many. */
const MAX_UNKNOWN_FIELDS = 16;
/** Longest `cabundle` accepted; AWS chains have four certificates. */
const MAX_CABUNDLE_LEN = 16;

const COSE_SIGN1_TAG = 18n;
const COSE_ALG_LABEL = 1n;
const COSE_CRIT_LABEL = 2n;
const ES384 = -35n;
const ES384_SIGNATURE_LEN = 96;
const PCR_COUNT = 32;

const err = (code, details) => new AttestationError(code, details);
const invalid = (field, reason) => err('InvalidField', { field, reason });

/**
 * Calls `item` once per entry (map) or element (array), for definite and
 * indefinite lengths alike. A declared count costs nothing to honour: every
 * item consumes input, so an absurd count ends at end-of-input.
 */
function forEachItem(d, context, length, item) {
  if (length === null) {
    while (d.peek(context).kind !== 'break') item();
    d.breakItem(context);
    return;
  }
  for (let i = 0n; i < length; i++) item();
}

const forEachMapEntry = (d, context, entry) => forEachItem(d, context, d.map(context), entry);
const forEachArrayItem = (d, context, item) => forEachItem(d, context, d.array(context), item);

/** Skips one value of any type, refusing nesting deeper than MAX_NESTING_DEPTH. */
function skipValue(d, context, depth) {
  if (depth > MAX_NESTING_DEPTH) throw err('NestingTooDeep', { context, max: MAX_NESTING_DEPTH });
  const { kind } = d.peek(context);
  if (kind === 'array') {
    forEachArrayItem(d, context, () => skipValue(d, context, depth + 1));
  } else if (kind === 'map') {
    forEachMapEntry(d, context, () => {
      skipValue(d, context, depth + 1);
      skipValue(d, context, depth + 1);
    });
  } else if (kind === 'tag') {
    d.tag(context);
    skipValue(d, context, depth + 1);
  } else if (kind === 'break') {
    throw err('MalformedCbor', { context, reason: 'unexpected break' });
  } else {
    d.skipFlat(context);
  }
}

function expectEnd(d, context) {
  const count = d.remaining();
  if (count !== 0) throw err('TrailingBytes', { context, count });
}

function checkProtectedHeader(protectedBytes) {
  const CTX = 'protected header';
  const d = new Decoder(protectedBytes);
  let alg = null;
  let seen = 0;
  forEachMapEntry(d, CTX, () => {
    seen += 1;
    if (seen > MAX_UNKNOWN_FIELDS) {
      throw err('MalformedCbor', { context: CTX, reason: `more than ${MAX_UNKNOWN_FIELDS} entries` });
    }
    if (d.peek(CTX).kind !== 'uint') {
      skipValue(d, CTX, 1);
      skipValue(d, CTX, 1);
      return;
    }
    const label = d.uint(CTX);
    if (label === COSE_ALG_LABEL) {
      if (alg !== null) throw err('MalformedCbor', { context: CTX, reason: 'algorithm label appears twice' });
      if (d.peek(CTX).kind === 'text') {
        throw err('MalformedCbor', { context: CTX, reason: 'text algorithm names are not supported' });
      }
      alg = d.int(CTX);
    } else if (label === COSE_CRIT_LABEL) {
      throw err('CriticalHeader');
    } else {
      skipValue(d, CTX, 1);
    }
  });
  expectEnd(d, CTX);
  if (alg === null) throw err('MissingAlgorithm');
  if (alg !== ES384) {
    // Out-of-i64 values are certainly not ES384; report the saturated value, as Rust does.
    const found = alg < -(2n ** 63n) || alg >= 2n ** 63n ? -(2n ** 63n) : alg;
    throw err('UnsupportedAlgorithm', { found: found.toString() });
  }
}

function setOnce(fields, key, value) {
  if (Object.hasOwn(fields, key)) throw err('DuplicateField', { field: key });
  fields[key] = value;
}

function optionalBytes(d, field) {
  if (d.peek(field).kind === 'null') {
    d.null(field);
    return null;
  }
  const v = d.bytesItem(field);
  if (v.length > MAX_OPTIONAL_FIELD_LEN) {
    throw invalid(field, `${v.length} bytes, more than ${MAX_OPTIONAL_FIELD_LEN}`);
  }
  return Uint8Array.from(v);
}

function parsePcrs(d) {
  const pcrs = new Map();
  forEachMapEntry(d, 'pcrs', () => {
    if (pcrs.size === PCR_COUNT) throw err('InvalidPcr', { reason: `more than ${PCR_COUNT} entries` });
    const index = d.uint('pcrs');
    if (index >= BigInt(PCR_COUNT)) throw err('InvalidPcr', { reason: `index ${index} is not below ${PCR_COUNT}` });
    const i = Number(index);
    const value = d.bytesItem('pcrs');
    if (![32, 48, 64].includes(value.length)) {
      throw err('InvalidPcr', { reason: `PCR${i} is ${value.length} bytes, not 32, 48 or 64` });
    }
    if (pcrs.has(i)) throw err('InvalidPcr', { reason: `PCR${i} appears twice` });
    pcrs.set(i, Uint8Array.from(value));
  });
  if (pcrs.size === 0) throw err('InvalidPcr', { reason: 'no entries' });
  return new Map([...pcrs].sort((a, b) => a[0] - b[0]));
}

function parseCabundle(d) {
  const certs = [];
  forEachArrayItem(d, 'cabundle', () => {
    if (certs.length === MAX_CABUNDLE_LEN) throw invalid('cabundle', `more than ${MAX_CABUNDLE_LEN} certificates`);
    const cert = d.bytesItem('cabundle');
    if (cert.length === 0) throw invalid('cabundle', `entry ${certs.length} is empty`);
    certs.push(Uint8Array.from(cert));
  });
  if (certs.length === 0) throw invalid('cabundle', 'empty');
  return certs;
}

const FIELD_PARSERS = {
  module_id: (d) => {
    const v = d.text('module_id');
    if (v === '') throw invalid('module_id', 'empty');
    return v;
  },
  digest: (d) => {
    const v = d.text('digest');
    if (v !== 'SHA384') throw invalid('digest', `${JSON.stringify(v)}, expected "SHA384"`);
    return v;
  },
  timestamp: (d) => {
    const v = d.uint('timestamp');
    // A JS number holds milliseconds exactly up to 2^53-1 (year 287396); a
    // larger timestamp cannot pass any check time, so refuse it here.
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid('timestamp', `${v} is above 2^53-1`);
    return Number(v);
  },
  pcrs: parsePcrs,
  certificate: (d) => {
    const v = d.bytesItem('certificate');
    if (v.length === 0) throw invalid('certificate', 'empty');
    return Uint8Array.from(v);
  },
  cabundle: parseCabundle,
  public_key: (d) => optionalBytes(d, 'public_key'),
  user_data: (d) => optionalBytes(d, 'user_data'),
  nonce: (d) => optionalBytes(d, 'nonce'),
};

function parsePayload(bytes) {
  const d = new Decoder(bytes);
  const fields = Object.create(null);
  let unknown = 0;
  forEachMapEntry(d, 'payload', () => {
    const key = d.text('payload key');
    const parse = Object.hasOwn(FIELD_PARSERS, key) ? FIELD_PARSERS[key] : null;
    if (parse) {
      setOnce(fields, key, parse(d));
      return;
    }
    unknown += 1;
    if (unknown > MAX_UNKNOWN_FIELDS) throw err('TooManyUnknownFields', { max: MAX_UNKNOWN_FIELDS });
    skipValue(d, 'payload', 1);
  });
  expectEnd(d, 'payload');
  for (const field of ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle']) {
    if (!Object.hasOwn(fields, field)) throw err('MissingField', { field });
  }
  return {
    module_id: fields.module_id,
    digest: fields.digest,
    timestamp_ms: fields.timestamp,
    pcrs: fields.pcrs,
    certificate: fields.certificate,
    cabundle: fields.cabundle,
    public_key: fields.public_key ?? null,
    user_data: fields.user_data ?? null,
    nonce: fields.nonce ?? null,
  };
}

/**
 * Parses a COSE_Sign1 attestation document (CBOR tag 18 optional). Checks
 * structure only: sizes, types, the ES384 algorithm header, required payload
 * fields, and that nothing follows the COSE array or the payload map.
 * Throws AttestationError. Nothing in the result is verified.
 *
 * @param {Uint8Array} bytes
 */
function parseDocument(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('document must be bytes (a Uint8Array)');
  if (bytes.length > MAX_DOCUMENT_LEN) throw err('InputTooLarge', { len: bytes.length, max: MAX_DOCUMENT_LEN });
  const CTX = 'COSE_Sign1 structure';
  const d = new Decoder(bytes);
  if (d.peek(CTX).kind === 'tag') {
    const tag = d.tag(CTX);
    if (tag !== COSE_SIGN1_TAG) throw err('UnexpectedTag', { tag: tag.toString() });
  }
  const items = d.array(CTX);
  if (items !== 4n) {
    const found = items === null ? 'an indefinite-length array' : `${items} items`;
    throw err('MalformedCbor', { context: CTX, reason: `expected an array of 4 items, found ${found}` });
  }
  const protectedBytes = d.bytesItem('protected header');
  checkProtectedHeader(protectedBytes);

  // The unprotected header carries nothing used (AWS sends `{}`), but it must
  // be a map and is walked with the depth limit like any uninterpreted value.
  const unprotected = d.peek('unprotected header');
  if (unprotected.kind !== 'map') {
    throw err('MalformedCbor', { context: 'unprotected header', reason: `expected a map, found ${unprotected.kind}` });
  }
  skipValue(d, 'unprotected header', 0);

  const payload = d.bytesItem('payload');
  const signature = d.bytesItem('signature');
  if (signature.length !== ES384_SIGNATURE_LEN) throw err('SignatureLength', { len: signature.length });
  expectEnd(d, CTX);

  return {
    protected: Uint8Array.from(protectedBytes),
    payload: Uint8Array.from(payload),
    signature: Uint8Array.from(signature),
    fields: parsePayload(payload),
  };
}

/** The bytes the COSE signature covers (RFC 9052 §4.4): ["Signature1", protected, h'', payload]. */
function sigStructure(doc) {
  return concatBytes([encodeHead(4, 4), encodeText('Signature1'), encodeBytes(doc.protected), encodeBytes(new Uint8Array(0)), encodeBytes(doc.payload)]);
}

export {
  parseDocument,
  sigStructure,
  skipValue,
  MAX_DOCUMENT_LEN,
  MAX_OPTIONAL_FIELD_LEN,
  MAX_NESTING_DEPTH,
  MAX_UNKNOWN_FIELDS,
  MAX_CABUNDLE_LEN,
};
