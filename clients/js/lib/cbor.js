// A small CBOR (RFC 8949) decoder for untrusted input, written here rather
// than taken from npm: the attestation parser needs a decoder that reads one
// item at a time over a byte array, so that (as the Rust parser does with
// minicbor)
//   - a declared length is never allocated up front: a string longer than the
//     input left is end-of-input ("truncated"), and a declared item count is
//     honoured lazily, each item consuming input;
//   - nesting is walked with an explicit depth limit, by the caller;
//   - the position is known, so trailing bytes can be refused;
//   - end-of-input is told apart from other malformations.
// The maintained npm decoders (cbor, cbor-x, cborg) decode whole values
// eagerly into JS objects, which gives none of this.

import { AttestationError } from './errors.js';
import { concatBytes, utf8 } from './bytes.js';

const MAJOR_NAMES = [
  'an unsigned integer',
  'a negative integer',
  'a byte string',
  'a text string',
  'an array',
  'a map',
  'a tag',
  'a simple value or float',
];

const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class Decoder {
  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }

  remaining() {
    return this.bytes.length - this.pos;
  }

  truncated(context) {
    return new AttestationError('Truncated', { context });
  }

  malformed(context, reason) {
    return new AttestationError('MalformedCbor', { context, reason: `${reason} at offset ${this.pos}` });
  }

  /**
   * What the next item is, without consuming it: `{ major, info }`, plus
   * `kind` one of 'uint', 'nint', 'bytes', 'text', 'array', 'map', 'tag',
   * 'null', 'break', 'simple'; `indefinite` for strings, arrays and maps.
   */
  peek(context) {
    if (this.pos >= this.bytes.length) throw this.truncated(context);
    const initial = this.bytes[this.pos];
    const major = initial >> 5;
    const info = initial & 0x1f;
    let kind = ['uint', 'nint', 'bytes', 'text', 'array', 'map', 'tag', 'simple'][major];
    if (initial === 0xf6) kind = 'null';
    if (initial === 0xff) kind = 'break';
    return { major, info, kind, indefinite: info === 31 && major >= 2 && major <= 5 };
  }

  /** Reads an item head: `{ major, arg }` (`arg` a BigInt, or null when indefinite). */
  head(context) {
    const { major, info } = this.peek(context);
    this.pos += 1;
    if (info < 24) return { major, arg: BigInt(info) };
    if (info === 31) {
      if (major < 2 || major === 6) {
        this.pos -= 1;
        throw this.malformed(context, `indefinite length is not allowed for ${MAJOR_NAMES[major]}`);
      }
      return { major, arg: null };
    }
    if (info > 27) {
      this.pos -= 1;
      throw this.malformed(context, `reserved additional information ${info}`);
    }
    const size = 1 << (info - 24);
    if (this.remaining() < size) throw this.truncated(context);
    let arg = 0n;
    for (let i = 0; i < size; i++) arg = (arg << 8n) | BigInt(this.bytes[this.pos + i]);
    this.pos += size;
    return { major, arg };
  }

  expectMajor(context, want, what) {
    const { major, kind } = this.peek(context);
    if (major !== want || kind === 'break' || (want === 7 && kind !== 'null')) {
      throw this.malformed(context, `expected ${what}, found ${describeKind(this.peek(context))}`);
    }
  }

  /** An unsigned integer, as a BigInt. */
  uint(context) {
    this.expectMajor(context, 0, 'an unsigned integer');
    return this.head(context).arg;
  }

  /** A signed integer (major 0 or 1), as a BigInt. */
  int(context) {
    const { major } = this.peek(context);
    if (major === 1) return -1n - this.head(context).arg;
    this.expectMajor(context, 0, 'an integer');
    return this.head(context).arg;
  }

  /** A definite-length byte string (a view into the input). */
  bytesItem(context) {
    this.expectDefinite(context, 2, 'a definite-length byte string');
    return this.take(context, this.head(context).arg);
  }

  /** A definite-length, valid UTF-8 text string. */
  text(context) {
    this.expectDefinite(context, 3, 'a definite-length text string');
    const start = this.pos;
    const raw = this.take(context, this.head(context).arg);
    try {
      return utf8Decoder.decode(raw);
    } catch {
      this.pos = start;
      throw this.malformed(context, 'invalid UTF-8 in a text string');
    }
  }

  expectDefinite(context, major, what) {
    const p = this.peek(context);
    if (p.major !== major || p.indefinite) throw this.malformed(context, `expected ${what}, found ${describeKind(p)}`);
  }

  take(context, length) {
    if (length > BigInt(this.remaining())) throw this.truncated(context);
    const n = Number(length);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Array head: item count as a BigInt, or null if indefinite. */
  array(context) {
    this.expectMajor(context, 4, 'an array');
    return this.head(context).arg;
  }

  /** Map head: entry count as a BigInt, or null if indefinite. */
  map(context) {
    this.expectMajor(context, 5, 'a map');
    return this.head(context).arg;
  }

  tag(context) {
    this.expectMajor(context, 6, 'a tag');
    return this.head(context).arg;
  }

  null(context) {
    this.expectMajor(context, 7, 'null');
    this.pos += 1;
  }

  /** Consumes a break byte (0xff). */
  breakItem(context) {
    if (this.peek(context).kind !== 'break') throw this.malformed(context, 'expected a break');
    this.pos += 1;
  }

  /**
   * Skips one scalar or string, including an indefinite-length string (its
   * chunks must be definite strings of the same type). Arrays, maps and tags
   * are the caller's: they need a depth limit.
   */
  skipFlat(context) {
    const p = this.peek(context);
    switch (p.major) {
      case 0:
      case 1:
        this.head(context);
        return;
      case 2:
      case 3:
        if (!p.indefinite) {
          this.take(context, this.head(context).arg);
          return;
        }
        this.pos += 1;
        for (;;) {
          const chunk = this.peek(context);
          if (chunk.kind === 'break') {
            this.pos += 1;
            return;
          }
          if (chunk.major !== p.major || chunk.indefinite) {
            throw this.malformed(context, `chunk of an indefinite string is ${describeKind(chunk)}`);
          }
          this.take(context, this.head(context).arg);
        }
      case 7:
        return this.skipSimple(context, p.info);
      default:
        throw this.malformed(context, `cannot skip ${describeKind(p)} without a depth limit`);
    }
  }

  skipSimple(context, info) {
    if (info < 24) {
      this.pos += 1;
      return;
    }
    if (info >= 28) throw this.malformed(context, info === 31 ? 'unexpected break' : `reserved additional information ${info}`);
    const size = [1, 2, 4, 8][info - 24];
    if (this.remaining() < 1 + size) throw this.truncated(context);
    this.pos += 1 + size;
  }
}

function describeKind(p) {
  if (p.kind === 'null') return 'null';
  if (p.kind === 'break') return 'a break';
  return `${p.indefinite ? 'an indefinite-length ' + MAJOR_NAMES[p.major].replace(/^an? /, '') : MAJOR_NAMES[p.major]}`;
}

// --- encoding, only what the COSE Sig_structure needs ---

function encodeHead(major, length) {
  const m = major << 5;
  if (length < 24) return Uint8Array.of(m | length);
  if (length < 0x100) return Uint8Array.of(m | 24, length);
  if (length < 0x10000) return Uint8Array.of(m | 25, length >> 8, length & 0xff);
  return Uint8Array.of(m | 26, (length >>> 24) & 0xff, (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff);
}

const encodeBytes = (b) => concatBytes([encodeHead(2, b.length), b]);
const encodeText = (s) => {
  const b = utf8(s);
  return concatBytes([encodeHead(3, b.length), b]);
};

export { Decoder, encodeHead, encodeBytes, encodeText };
