// Byte helpers on Uint8Array only (no Node types): this module runs in browsers
// and in Node alike.

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Lowercase hex of bytes. */
export const toHex = (bytes) => {
  let out = '';
  for (const b of bytes) out += HEX[b];
  return out;
};

/** Hex (either case, even length) to bytes; null if it is not hex. */
export function fromHex(text) {
  if (typeof text !== 'string' || !/^(?:[0-9a-fA-F]{2})*$/.test(text)) return null;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Standard base64 (already checked to be well-formed) to bytes. */
export function fromBase64(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

const encoder = new TextEncoder();
/** UTF-8 bytes of a string (lone surrogates become U+FFFD). */
export const utf8 = (text) => encoder.encode(text);

/** One Uint8Array holding all of `parts`. */
export function concatBytes(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export const bytesEqual = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Big-endian unsigned integer of bytes. */
export const bigFromBytes = (bytes) => (bytes.length === 0 ? 0n : BigInt('0x' + toHex(bytes)));

/** `n` as `size` big-endian bytes (n < 2^(8 size)). */
export function bigToBytes(n, size) {
  return fromHex(n.toString(16).padStart(2 * size, '0'));
}
