// The verification pipeline: parse, chain at the check time, COSE signature
// with the leaf key, then policy. The first failure is thrown.

import { verifyEcdsa } from './webcrypto.js';
import { parseDocument, sigStructure } from './document.js';
import { verifyChain } from './chain.js';
import { TrustedRoot } from './root.js';
import { resolvePolicy, resolveCheckTime, checkPolicy, toHex } from './policy.js';
import { AttestationError } from './errors.js';

/** A debug-mode enclave reports PCR0, PCR1 and PCR2 as all zeroes. */
function isDebug(pcrs) {
  return [0, 1, 2].every((i) => pcrs.has(i) && pcrs.get(i).every((b) => b === 0));
}

function toRoot(root) {
  if (root === undefined || root === null) return TrustedRoot.awsNitro();
  if (root instanceof TrustedRoot) return root;
  return TrustedRoot.fromPemOrDer(root);
}

/**
 * The verified fields, in the shape `nautilus-client verify-doc` prints:
 * byte fields as lowercase hex, null when absent (an empty byte string is "").
 */
function summary(fields, debug) {
  const hexOrNull = (b) => (b === null ? null : toHex(b));
  return {
    module_id: fields.module_id,
    timestamp_ms: fields.timestamp_ms,
    digest: fields.digest,
    pcrs: Object.fromEntries([...fields.pcrs].map(([i, v]) => [String(i), toHex(v)])),
    public_key: hexOrNull(fields.public_key),
    user_data: hexOrNull(fields.user_data),
    nonce: hexOrNull(fields.nonce),
    debug,
  };
}

/**
 * Verifies an AWS Nitro Enclaves attestation document (COSE_Sign1 bytes).
 *
 * @param {Uint8Array} doc the document
 * @param {object} [options]
 * @param {TrustedRoot|string|Uint8Array} [options.root] trust anchor (PEM or DER); the embedded AWS root by default
 * @param {'now'|'document'|number} [options.at] check time: now (default), the document's own timestamp, or ms since the epoch
 * @param {number|null} [options.maxAgeSecs] largest accepted age at the check time (default 300; null: no limit)
 * @param {number} [options.maxFutureSkewSecs] how far in the future a timestamp may be (default 60)
 * @param {Map<number, Uint8Array|string>|Record<string, Uint8Array|string>} [options.pcrs] PCRs that must be present with these values
 * @param {Uint8Array|string} [options.nonce] the nonce the document must carry (bytes or hex)
 * @param {boolean} [options.allowDebug] accept debug-mode documents (PCR0-2 all zero)
 * @returns {Promise<object>} the verified fields, as `nautilus-client verify-doc` prints them
 * @throws {AttestationError} the document is not valid, with the precise reason
 * @throws {ConfigError} a root or PCR set supplied is unusable
 */
async function verifyAttestation(doc, options = {}) {
  const root = toRoot(options.root);
  const policy = resolvePolicy(options);
  await root.checkPin();
  const parsed = parseDocument(doc);
  const { fields } = parsed;
  const atMs = resolveCheckTime(policy, fields.timestamp_ms);
  const leaf = await verifyChain(root, fields.cabundle, fields.certificate, atMs);
  if (leaf.curve !== 'P-384') {
    throw new AttestationError('UnsupportedPublicKey', { cert: 'leaf', reason: 'ES384 needs a P-384 key' });
  }
  // COSE ES384 signatures are raw r || s (RFC 8152), as Web Crypto verifies them.
  if (!(await verifyEcdsa(leaf.key, 'SHA-384', parsed.signature, sigStructure(parsed)))) {
    throw new AttestationError('CoseSignature');
  }
  const debug = isDebug(fields.pcrs);
  checkPolicy(policy, fields, atMs, debug);
  return summary(fields, debug);
}

export { verifyAttestation, toRoot };
