// The trust anchor: the pinned AWS Nitro Enclaves root, or one the caller names.

import { ConfigError } from './errors.js';
import { parseCertificate } from './der.js';
import { fromBase64 } from './bytes.js';
import { sha256Hex } from './webcrypto.js';

/** SHA-256 of the AWS Nitro Enclaves root G1 (DER), the value AWS documents for it. */
const AWS_NITRO_ROOT_G1_SHA256 = '641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b';

// The AWS Nitro Enclaves root G1 certificate (DER, base64), as AWS publishes it;
// checked against the pin every time it is loaded.
const AWS_NITRO_ROOT_G1_BASE64 =
  'MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTELMAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYDVQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQLDANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEGBSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZEh8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkFR+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYCMQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPWrfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6NIwLz3/Y=';

/** The certificate a document's `cabundle[0]` must be byte-identical to. */
class TrustedRoot {
  /**
   * @param {Uint8Array} der
   * @param {string|null} pin the SHA-256 (hex) the DER must have, checked by `checkPin`
   */
  constructor(der, pin = null) {
    try {
      parseCertificate(der);
    } catch (e) {
      throw new ConfigError('InvalidRoot', { reason: e.message });
    }
    this.der = Uint8Array.from(der);
    this.pin = pin;
    Object.freeze(this);
  }

  /**
   * The embedded AWS Nitro Enclaves root G1. Its pinned SHA-256 is checked
   * before every verification (`checkPin`; hashing is asynchronous in Web Crypto).
   */
  static awsNitro() {
    return new TrustedRoot(fromBase64(AWS_NITRO_ROOT_G1_BASE64), AWS_NITRO_ROOT_G1_SHA256);
  }

  /** Throws ConfigError 'RootPinMismatch' if this root has a pin its DER does not match. */
  async checkPin() {
    if (this.pin === null) return;
    const got = await sha256Hex(this.der);
    if (got !== this.pin) throw new ConfigError('RootPinMismatch', { expected: this.pin, got });
  }

  /** A different root (e.g. a development CA), given as one DER certificate. */
  static fromDer(der) {
    if (!(der instanceof Uint8Array)) throw new TypeError('DER root must be bytes (a Uint8Array)');
    return new TrustedRoot(der);
  }

  /**
   * A different root given as one PEM certificate. The armour is decoded to
   * the exact DER inside it (never re-encoded): `cabundle[0]` is compared byte for byte.
   */
  static fromPem(pem) {
    const m = /^-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]*?)\r?\n?-----END ([A-Z0-9 ]+)-----$/.exec(String(pem).trim());
    if (!m) throw new ConfigError('InvalidRoot', { reason: 'not a PEM block (-----BEGIN …----- / -----END …-----)' });
    if (m[1] !== m[3]) throw new ConfigError('InvalidRoot', { reason: `PEM labels differ: ${JSON.stringify(m[1])} and ${JSON.stringify(m[3])}` });
    if (m[1] !== 'CERTIFICATE') {
      throw new ConfigError('InvalidRoot', { reason: `PEM label is ${JSON.stringify(m[1])}, expected "CERTIFICATE"` });
    }
    const b64 = m[2].replace(/\r?\n/g, '');
    if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(b64)) {
      throw new ConfigError('InvalidRoot', { reason: 'PEM body is not valid base64' });
    }
    return new TrustedRoot(fromBase64(b64));
  }

  /** PEM if the bytes are text with a PEM header, DER otherwise. */
  static fromPemOrDer(bytes) {
    if (typeof bytes === 'string') return TrustedRoot.fromPem(bytes);
    let text = null;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      // Not UTF-8: DER.
    }
    return text !== null && text.includes('-----BEGIN') ? TrustedRoot.fromPem(text) : TrustedRoot.fromDer(bytes);
  }

  /** Hex SHA-256 of the DER, as root pins are usually written (a Promise). */
  sha256Hex() {
    return sha256Hex(this.der);
  }
}

export { TrustedRoot, AWS_NITRO_ROOT_G1_SHA256 };
