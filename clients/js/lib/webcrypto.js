// The cryptography, on Web Crypto (`globalThis.crypto.subtle`) only: the same
// code runs in browsers and in Node (where `globalThis.crypto` is Node's Web
// Crypto, global from Node 19; `nautilus-client/node` installs it on Node 18).
// ECDSA signatures here are raw `r || s`, as Web Crypto and COSE both use;
// X.509's DER signatures are converted by der.js first.

import { bigFromBytes, bigToBytes, concatBytes, toHex } from './bytes.js';

/** The two curves an attestation uses: P-384 (AWS chain, COSE), P-256 (results). */
const CURVES = {
  'P-256': {
    size: 32,
    p: BigInt('0xffffffff00000001000000000000000000000000ffffffffffffffffffffffff'),
    b: BigInt('0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b'),
    n: BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551'),
  },
  'P-384': {
    size: 48,
    p: BigInt('0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff'),
    b: BigInt('0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef'),
    n: BigInt('0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973'),
  },
};

function subtle() {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) {
    throw new Error(
      'Web Crypto is not available (globalThis.crypto.subtle): use a browser on https:// or localhost, Node >= 19, or import nautilus-client/node on Node 18',
    );
  }
  return s;
}

/** Lowercase hex SHA-256 of bytes. */
export async function sha256Hex(bytes) {
  return toHex(new Uint8Array(await subtle().digest('SHA-256', bytes)));
}

function modPow(base, exp, mod) {
  let result = 1n;
  base %= mod;
  while (exp > 0n) {
    if (exp & 1n) result = (result * base) % mod;
    base = (base * base) % mod;
    exp >>= 1n;
  }
  return result;
}

/**
 * A SEC1 point (02/03 compressed or 04 uncompressed) as the uncompressed form
 * every Web Crypto accepts (browsers do not all import compressed points).
 * Returns null if it is no point of `curve`. Both curves have p ≡ 3 (mod 4),
 * so the square root is a single exponentiation.
 */
export function uncompressedPoint(curve, sec1) {
  const { size, p, b } = CURVES[curve];
  if (sec1.length === 1 + 2 * size && sec1[0] === 4) return sec1;
  if (sec1.length !== 1 + size || (sec1[0] !== 2 && sec1[0] !== 3)) return null;
  const x = bigFromBytes(sec1.subarray(1));
  if (x >= p) return null;
  const rhs = (((x * x * x - 3n * x + b) % p) + p) % p;
  let y = modPow(rhs, (p + 1n) / 4n, p);
  if ((y * y) % p !== rhs) return null;
  if ((y & 1n) !== BigInt(sec1[0] & 1)) y = p - y;
  return concatBytes([Uint8Array.of(4), bigToBytes(x, size), bigToBytes(y, size)]);
}

/** An ECDSA verification key for a SEC1 point of `curve`; null if it is not one. */
export async function importEcdsaKey(curve, sec1) {
  const point = uncompressedPoint(curve, sec1);
  if (point === null) return null;
  try {
    return await subtle().importKey('raw', point, { name: 'ECDSA', namedCurve: curve }, false, ['verify']);
  } catch {
    return null;
  }
}

/** The group order of `curve`, for range and low-S checks. */
export const curveOrder = (curve) => CURVES[curve].n;
/** Bytes in one scalar of `curve`. */
export const scalarSize = (curve) => CURVES[curve].size;

/**
 * Whether `signature` (raw r || s) is `key`'s ECDSA signature over `data`
 * with `hash` ('SHA-256' or 'SHA-384'). Never throws for bad input.
 */
export async function verifyEcdsa(key, hash, signature, data) {
  try {
    return await subtle().verify({ name: 'ECDSA', hash }, key, signature, data);
  } catch {
    return false;
  }
}
