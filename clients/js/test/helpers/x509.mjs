// Certificates and documents built here from real keys and signatures (the
// twin of the rcgen/p384 part of src/attestation-verify/tests/synthetic_chains.rs):
// a DER encoder for the few X.509 structures needed, Node's crypto for keys
// and signatures, and the NSM's payload map.

import crypto from 'node:crypto';
import { Fields, Cose, concat, encodeBytes, encodeText, encodeUint, encodePcrMap, encodeProtected, head } from './docs.mjs';

// --- DER ---

function derLength(n) {
  if (n < 0x80) return [n];
  const bytes = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return [0x80 | bytes.length, ...bytes];
}
export const tlv = (tag, ...contents) => {
  const body = concat(...contents);
  return concat([tag], derLength(body.length), body);
};
export const seq = (...items) => tlv(0x30, ...items);
const set = (...items) => tlv(0x31, ...items);
export const oid = (dotted) => {
  const arcs = dotted.split('.').map(BigInt);
  const out = [Number(arcs[0] * 40n + arcs[1])];
  for (const arc of arcs.slice(2)) {
    const groups = [];
    for (let v = arc; ; v >>= 7n) {
      groups.unshift(Number(v & 0x7fn));
      if (v < 0x80n) break;
    }
    out.push(...groups.map((g, i) => (i < groups.length - 1 ? g | 0x80 : g)));
  }
  return tlv(0x06, out);
};
const integer = (bytes) => tlv(0x02, bytes[0] & 0x80 ? [0, ...bytes] : bytes);
const bitString = (bytes) => tlv(0x03, [0], bytes);
const octetString = (bytes) => tlv(0x04, bytes);
const bool = (v) => tlv(0x01, [v ? 0xff : 0x00]);
const explicit = (n, ...contents) => tlv(0xa0 | n, ...contents);

function utcTime(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, '0');
  const text = `${two(d.getUTCFullYear() % 100)}${two(d.getUTCMonth() + 1)}${two(d.getUTCDate())}${two(d.getUTCHours())}${two(d.getUTCMinutes())}${two(d.getUTCSeconds())}Z`;
  return tlv(0x17, Buffer.from(text, 'ascii'));
}

/**
 * A random positive 8-byte serial whose DER INTEGER is minimal: a leading
 * zero byte would be a non-minimal encoding, which OpenSSL (like any DER
 * parser) refuses.
 */
function serialNumber() {
  const serial = crypto.randomBytes(8);
  serial[0] = (serial[0] & 0x7f) | 0x01;
  return serial;
}

export const OIDS = {
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  ecdsaWithSha512: '1.2.840.10045.4.3.4',
  basicConstraints: '2.5.29.19',
  commonName: '2.5.4.3',
};

const name = (cn) => seq(set(seq(oid(OIDS.commonName), tlv(0x0c, Buffer.from(cn, 'utf8')))));

/** basicConstraints: 'ca', 'explicit-no-ca' (present, cA false) or 'no-ca' (absent). */
function basicConstraints(isCa) {
  if (isCa === 'no-ca') return [];
  const value = isCa === 'ca' ? seq(bool(true)) : seq();
  return [seq(oid(OIDS.basicConstraints), bool(true), octetString(value))];
}

// --- keys and certificates ---

export const P384 = 'P-384';
export const P256 = 'P-256';

export const generate = (curve) => crypto.generateKeyPairSync('ec', { namedCurve: curve === P384 ? 'secp384r1' : 'prime256v1' });

/** The signature algorithm an issuer's key implies, as rcgen chooses it. */
export const algorithmOf = (issuerKey) =>
  issuerKey.asymmetricKeyDetails.namedCurve === 'secp384r1' ? { oid: OIDS.ecdsaWithSha384, hash: 'sha384' } : { oid: OIDS.ecdsaWithSha256, hash: 'sha256' };

/**
 * A certificate for `subjectPublic`, signed by `issuerPrivate`. Options
 * change one property at a time: `algorithm` ({oid, hash, params}),
 * `innerAlgorithm`, `extensions` (raw DER list), `spki` (raw DER).
 */
export function certificate({ subject, issuer, subjectPublic, issuerPrivate, notBefore, notAfter, isCa, ...opts }) {
  const alg = opts.algorithm ?? algorithmOf(issuerPrivate);
  const algId = seq(oid(alg.oid), ...(alg.params ? [alg.params] : []));
  const innerAlgId = opts.innerAlgorithm ? seq(oid(opts.innerAlgorithm)) : algId;
  const extensions = opts.extensions ?? basicConstraints(isCa);
  const tbs = seq(
    explicit(0, integer([2])),
    integer(serialNumber()),
    innerAlgId,
    name(issuer),
    seq(utcTime(notBefore), utcTime(notAfter)),
    name(subject),
    opts.spki ?? subjectPublic.export({ type: 'spki', format: 'der' }),
    ...(extensions.length ? [explicit(3, seq(...extensions))] : []),
  );
  const signature = crypto.sign(alg.hash, tbs, { key: issuerPrivate, dsaEncoding: 'der' });
  return seq(tbs, algId, bitString(signature));
}

export { basicConstraints, bool, octetString, seq as derSeq };

// --- documents ---

/** The leaf's notBefore (2025-06-15); valid three hours, as AWS leaves are. */
export const LEAF_NOT_BEFORE_MS = 1_750_000_000_000;
export const LEAF_LIFETIME_MS = 3 * 60 * 60 * 1000;
/** When documents are made: one hour into the leaf's life. */
export const DOC_TIMESTAMP_MS = LEAF_NOT_BEFORE_MS + 3600 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

/** A CA: a self-signed root, or issued by `parent`; key on `curve`. */
export function makeCa(cn, { parent = null, isCa = 'ca', curve = P384 } = {}) {
  const keys = generate(curve);
  const der = certificate({
    subject: cn,
    issuer: parent ? parent.cn : cn,
    subjectPublic: keys.publicKey,
    issuerPrivate: parent ? parent.keys.privateKey : keys.privateKey,
    notBefore: LEAF_NOT_BEFORE_MS - DAY_MS,
    notAfter: LEAF_NOT_BEFORE_MS + 30 * DAY_MS,
    isCa,
  });
  return { cn, keys, der };
}

/** A leaf certifying `subjectPublic`, issued by `issuer`. */
export function makeLeaf(issuer, subjectPublic, { isCa = 'explicit-no-ca', ...opts } = {}) {
  return certificate({
    subject: 'synthetic enclave',
    issuer: issuer.cn,
    subjectPublic,
    issuerPrivate: issuer.keys.privateKey,
    notBefore: LEAF_NOT_BEFORE_MS,
    notAfter: LEAF_NOT_BEFORE_MS + LEAF_LIFETIME_MS,
    isCa,
    ...opts,
  });
}

/**
 * A document in the NSM's format (untagged, ES384, non-debug PCRs), signed
 * by `signer` (a P-384 private key) over ["Signature1", protected, h'', payload].
 */
export function makeDocument(cabundle, leaf, signer, { timestampMs = DOC_TIMESTAMP_MS, publicKey = null, userData = null, nonce = null } = {}) {
  const fields = new Fields();
  fields.set('module_id', encodeText('i-synthetic-enc0123456789abcdef'));
  fields.set('digest', encodeText('SHA384'));
  fields.set('timestamp', encodeUint(timestampMs));
  fields.set('pcrs', encodePcrMap(Array.from({ length: 16 }, (_, i) => [i, new Uint8Array(48).fill(i + 1)])));
  fields.setBytes('certificate', leaf);
  fields.setCabundle(cabundle);
  fields.set('public_key', encodeBytes(publicKey ?? Buffer.from('enclave public key')));
  fields.set('user_data', userData === null ? new Uint8Array([0xf6]) : encodeBytes(userData));
  fields.set('nonce', nonce === null ? new Uint8Array([0xf6]) : encodeBytes(nonce));
  const payload = fields.encode();
  const protectedHeader = encodeProtected([[1, -35]]);
  const toBeSigned = concat(head(4, 4), encodeText('Signature1'), encodeBytes(protectedHeader), encodeBytes(new Uint8Array(0)), encodeBytes(payload));
  const cose = new Cose();
  Object.assign(cose, {
    tagged: false,
    protected: protectedHeader,
    unprotectedRaw: new Uint8Array([0xa0]),
    payload,
    signature: crypto.sign('sha384', toBeSigned, { key: signer, dsaEncoding: 'ieee-p1363' }),
  });
  return cose.encode();
}

/** The positive control: P-384 root -> intermediate -> leaf, as AWS builds them. */
export class Chain {
  constructor() {
    this.root = makeCa('synthetic root');
    this.intermediate = makeCa('synthetic intermediate', { parent: this.root });
    this.enclave = generate(P384);
  }
  cabundle() {
    return [this.root.der, this.intermediate.der];
  }
  documentWithLeaf(leaf) {
    return makeDocument(this.cabundle(), leaf, this.enclave.privateKey);
  }
  leaf(opts) {
    return makeLeaf(this.intermediate, this.enclave.publicKey, opts);
  }
  document() {
    return this.documentWithLeaf(this.leaf());
  }
}
