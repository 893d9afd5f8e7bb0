// Test helpers: the real documents, and a small COSE/payload re-encoder for
// building mutated documents from them (the JS twin of
// src/attestation-verify/tests/common/mod.rs). The CBOR walking here is
// written independently of lib/cbor.js, for trusted input only.

import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PACKAGE_DIR = path.join(HERE, '..', '..');
export const REPO_DIR = path.join(PACKAGE_DIR, '..', '..');
export const DATA_DIR = path.join(PACKAGE_DIR, 'test', 'data', 'attestation');

/** A non-debug document with a definite-length payload map, the base for mutations. */
export const BASE = 'anchorage_turnkey_prod_2025-05-05.cbor';
/** A second non-debug document from a different enclave. */
export const OTHER = 'signal_svr2_2023-05-24.cbor';
export const HOUR_MS = 60 * 60 * 1000;

export function documents() {
  const names = fs
    .readdirSync(DATA_DIR)
    .filter((n) => n.endsWith('.cbor'))
    .sort();
  assert.strictEqual(names.length, 19, 'expected the 19 real documents');
  return names.map((name) => [name, document(name)]);
}

export const document = (name) => new Uint8Array(fs.readFileSync(path.join(DATA_DIR, name)));
export const expectedJson = () => JSON.parse(fs.readFileSync(path.join(DATA_DIR, 'expected.json'), 'utf8'));
export const timestampOf = (name) => expectedJson()[name].timestamp_ms;
export const hex = (b) => Buffer.from(b).toString('hex');
export const concat = (...parts) => new Uint8Array(Buffer.concat(parts.map((p) => Buffer.from(p))));

// --- encoding ---

export function head(major, n) {
  const m = major << 5;
  const v = BigInt(n);
  if (v < 24n) return Uint8Array.of(m | Number(v));
  if (v < 0x100n) return Uint8Array.of(m | 24, Number(v));
  if (v < 0x10000n) return Uint8Array.of(m | 25, Number(v >> 8n), Number(v & 0xffn));
  if (v < 0x100000000n) {
    const b = Buffer.alloc(5);
    b[0] = m | 26;
    b.writeUInt32BE(Number(v), 1);
    return b;
  }
  return head64(major, v);
}

/** A head with a 64-bit argument, whatever its value. */
export function head64(major, n) {
  const b = Buffer.alloc(9);
  b[0] = (major << 5) | 27;
  b.writeBigUInt64BE(BigInt(n), 1);
  return new Uint8Array(b);
}

export const encodeBytes = (b) => concat(head(2, b.length), b);
export const encodeText = (s) => {
  const b = Buffer.from(s, 'utf8');
  return concat(head(3, b.length), b);
};
export const encodeUint = (n) => head(0, n);
export const encodeInt = (n) => (n < 0 ? head(1, -1 - n) : head(0, n));

/** A `pcrs` map: [index, value] pairs in the given order. */
export const encodePcrMap = (pcrs) => concat(head(5, pcrs.length), ...pcrs.flatMap(([i, v]) => [encodeUint(i), encodeBytes(v)]));
/** A COSE protected header map with integer labels and values. */
export const encodeProtected = (entries) => concat(head(5, entries.length), ...entries.flatMap(([k, v]) => [encodeInt(k), encodeInt(v)]));

// --- raw item boundaries (trusted input: the real documents) ---

function readHead(b, pos) {
  const info = b[pos] & 0x1f;
  if (info < 24) return [info, pos + 1];
  if (info === 31) return [null, pos + 1];
  const size = 1 << (info - 24);
  let v = 0;
  for (let i = 0; i < size; i++) v = v * 256 + b[pos + 1 + i];
  return [v, pos + 1 + size];
}

/** Position just after the item at `pos`. */
export function itemEnd(b, pos) {
  const major = b[pos] >> 5;
  const [n, next] = readHead(b, pos);
  if (major === 0 || major === 1 || major === 7) return next;
  if (major === 2 || major === 3) {
    if (n !== null) return next + n;
    let p = next;
    while (b[p] !== 0xff) p = itemEnd(b, p);
    return p + 1;
  }
  if (major === 6) return itemEnd(b, next);
  const count = major === 5 ? 2 : 1;
  let p = next;
  if (n === null) {
    while (b[p] !== 0xff) p = itemEnd(b, p);
    return p + 1;
  }
  for (let i = 0; i < n * count; i++) p = itemEnd(b, p);
  return p;
}

function bytesAt(b, pos) {
  const [n, start] = readHead(b, pos);
  return [b.subarray(start, start + n), start + n];
}

/** The four COSE_Sign1 items, as raw parts; unprotected header kept as raw CBOR. */
export class Cose {
  static decode(bytes) {
    const c = new Cose();
    let p = 0;
    c.tagged = bytes[0] === 0xd2;
    if (c.tagged) p = 1;
    assert.strictEqual(bytes[p], 0x84);
    p += 1;
    [c.protected, p] = bytesAt(bytes, p);
    const u = itemEnd(bytes, p);
    c.unprotectedRaw = bytes.subarray(p, u);
    [c.payload, p] = bytesAt(bytes, u);
    [c.signature, p] = bytesAt(bytes, p);
    assert.strictEqual(p, bytes.length);
    c.protected = Uint8Array.from(c.protected);
    c.payload = Uint8Array.from(c.payload);
    c.signature = Uint8Array.from(c.signature);
    return c;
  }

  encode() {
    return concat(this.tagged ? [0xd2] : [], [0x84], encodeBytes(this.protected), this.unprotectedRaw, encodeBytes(this.payload), encodeBytes(this.signature));
  }
}

/** The payload map as [key, raw CBOR value] pairs, in document order. */
export class Fields {
  constructor(entries = []) {
    this.entries = entries;
  }

  static decode(payload) {
    const major = payload[0] >> 5;
    assert.strictEqual(major, 5);
    let [n, p] = readHead(payload, 0);
    const entries = [];
    for (let i = 0; n === null ? payload[p] !== 0xff : i < n; i++) {
      const keyEnd = itemEnd(payload, p);
      const [key] = bytesAt(payload, p);
      const valueEnd = itemEnd(payload, keyEnd);
      entries.push([Buffer.from(key).toString('utf8'), payload.subarray(keyEnd, valueEnd)]);
      p = valueEnd;
    }
    return new Fields(entries);
  }

  /** Re-encodes as a definite-length map. */
  encode() {
    return concat(head(5, this.entries.length), ...this.entries.flatMap(([k, raw]) => [encodeText(k), raw]));
  }

  get(key) {
    const e = this.entries.find(([k]) => k === key);
    assert.ok(e, `field ${key} present`);
    return e[1];
  }

  set(key, raw) {
    const e = this.entries.find(([k]) => k === key);
    if (e) e[1] = raw;
    else this.entries.push([key, raw]);
  }

  setBytes(key, value) {
    this.set(key, encodeBytes(value));
  }

  remove(key) {
    this.entries = this.entries.filter(([k]) => k !== key);
  }

  cabundle() {
    const raw = this.get('cabundle');
    let [n, p] = readHead(raw, 0);
    const out = [];
    for (let i = 0; i < n; i++) {
      let cert;
      [cert, p] = bytesAt(raw, p);
      out.push(Uint8Array.from(cert));
    }
    return out;
  }

  setCabundle(certs) {
    this.set('cabundle', concat(head(4, certs.length), ...certs.map(encodeBytes)));
  }

  certificate() {
    return Uint8Array.from(bytesAt(this.get('certificate'), 0)[0]);
  }

  pcrs() {
    const raw = this.get('pcrs');
    let [n, p] = readHead(raw, 0);
    const out = [];
    for (let i = 0; i < n; i++) {
      const [index, next] = readHead(raw, p);
      let value;
      [value, p] = bytesAt(raw, next);
      out.push([index, Uint8Array.from(value)]);
    }
    return out;
  }
}

/** Rebuilds `doc` with its payload fields transformed by `f` (signature unchanged). */
export function withFields(doc, f) {
  const cose = Cose.decode(doc);
  const fields = Fields.decode(cose.payload);
  f(fields);
  cose.payload = fields.encode();
  return cose.encode();
}

/**
 * Flips one bit inside the certificate's serial number: the TBS stays
 * well-formed DER, so only the signature over it can notice.
 */
export function flipSerialBit(certDer) {
  // Certificate SEQ, TBS SEQ, [0] version, then the serial INTEGER.
  const b = Buffer.from(certDer);
  const skipHead = (p) => (b[p + 1] & 0x80 ? p + 2 + (b[p + 1] & 0x7f) : p + 2);
  let p = skipHead(0); // into Certificate
  p = skipHead(p); // into TBS
  if (b[p] === 0xa0) p += 2 + b[p + 1];
  assert.strictEqual(b[p], 0x02, 'serial INTEGER');
  const len = b[p + 1];
  b[p + 1 + len] ^= 0x01;
  return new Uint8Array(b);
}

/** SplitMix64: a fixed-seed generator so failures reproduce (the same as the Rust tests'). */
export class SplitMix {
  constructor(seed) {
    this.state = BigInt(seed);
  }
  next() {
    const M = (1n << 64n) - 1n;
    this.state = (this.state + 0x9e3779b97f4a7c15n) & M;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
    return z ^ (z >> 31n);
  }
  below(n) {
    return Number(this.next() % BigInt(n));
  }
  bytes(len) {
    const out = Buffer.alloc(len + 8);
    for (let i = 0; i < len; i += 8) out.writeBigUInt64LE(this.next(), i);
    return new Uint8Array(out.subarray(0, len));
  }
}
