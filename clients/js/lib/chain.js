// Certificate chain verification: root = cabundle[0] -> ... -> cabundle[n-1] -> leaf,
// in the order and with the checks of src/attestation-verify/src/chain.rs.
// Not a general X.509 path builder: the order is fixed by the document, the
// anchor is compared byte for byte, and only the ECDSA algorithms the AWS
// chain uses (plus their P-256/SHA-256 siblings) are accepted.

import { parseCertificate, decodeOid, readTlv, ecdsaSignatureToRaw, DerError, ExtensionError, OID } from './der.js';
import { AttestationError } from './errors.js';
import { bytesEqual } from './bytes.js';
import { sha256Hex, importEcdsaKey, verifyEcdsa, scalarSize } from './webcrypto.js';

const err = (code, details) => new AttestationError(code, details);
const HASH_OF = { [OID.ecdsaWithSha256]: 'SHA-256', [OID.ecdsaWithSha384]: 'SHA-384' };
const CURVE_OF = { [OID.secp256r1]: 'P-256', [OID.secp384r1]: 'P-384' };

/** A certificate parsed by ./der.js (exact bytes, strict DER lengths). */
function parse(der, position) {
  try {
    const cert = parseCertificate(der);
    if (!bytesEqual(cert.outerAlg.der, cert.innerAlg.der)) throw new DerError('outer and inner signature algorithms differ');
    return { position, cert };
  } catch (e) {
    throw err('CertificateParse', { cert: position, reason: e.message });
  }
}

/** The subject's ECDSA key as `{ curve, key }` (a Web Crypto CryptoKey). */
async function subjectKey({ cert, position }) {
  const unsupported = (reason) => err('UnsupportedPublicKey', { cert: position, reason });
  if (cert.keyAlgOid !== OID.ecPublicKey) throw unsupported(`algorithm ${cert.keyAlgOid} is not id-ecPublicKey`);
  if (cert.keyAlgParams === null) throw unsupported('no curve parameters');
  let curveOid;
  try {
    const t = readTlv(cert.keyAlgParams, 0, cert.keyAlgParams.length);
    curveOid = decodeOid(t);
  } catch (e) {
    throw unsupported(`curve parameters: ${e.message}`);
  }
  if (cert.keyPoint === null) throw unsupported('key bit string has unused bits');
  const curve = CURVE_OF[curveOid];
  if (!curve) throw unsupported(`curve ${curveOid} is not P-256 or P-384`);
  // SEC1 points only: compressed (02/03) or uncompressed (04); the identity (00) is no key.
  if (![2, 3, 4].includes(cert.keyPoint[0])) throw unsupported('invalid curve point');
  const key = await importEcdsaKey(curve, cert.keyPoint);
  if (key === null) throw unsupported('invalid curve point');
  return { curve, key };
}

/** Checks that `issuer` signed `subject` and that the names chain. */
async function checkIssuedBy(subject, issuer) {
  const { cert, position } = subject;
  const alg = cert.outerAlg;
  const hash = HASH_OF[alg.oid];
  // RFC 5758: ecdsa-with-SHA* algorithm identifiers have absent parameters.
  if (alg.params !== null || !hash) throw err('UnsupportedCertSignatureAlgorithm', { cert: position, oid: alg.oid });
  const badSignature = err('CertificateSignature', { cert: position });
  if (cert.signature === null) throw badSignature;
  const { curve, key } = await subjectKey(issuer);
  let raw;
  try {
    raw = ecdsaSignatureToRaw(cert.signature, scalarSize(curve));
  } catch {
    throw badSignature;
  }
  if (!(await verifyEcdsa(key, hash, raw, cert.tbs))) throw badSignature;
  if (!bytesEqual(cert.issuer, issuer.cert.subject)) throw err('IssuerMismatch', { cert: position });
}

/** Valid from notBefore through notAfter, both inclusive (RFC 5280 §4.1.2.5), in ms. */
function checkValidAt({ cert, position }, atMs) {
  if (atMs < cert.notBeforeMs || atMs > cert.notAfterMs) {
    throw err('CertificateNotValidAt', {
      cert: position,
      at_ms: atMs,
      not_before_ms: cert.notBeforeMs,
      not_after_ms: cert.notAfterMs,
    });
  }
}

/** `cA` from basicConstraints; an absent extension means "not a CA". */
function isCa({ cert, position }) {
  try {
    return cert.basicConstraintsCa() === true;
  } catch (e) {
    if (e instanceof ExtensionError) throw err('BadExtension', { cert: position, reason: e.message });
    throw e;
  }
}

function checkCa(parsed) {
  if (!isCa(parsed)) throw err('NotACa', { cert: parsed.position });
}

/**
 * Verifies the chain and returns the leaf's key `{ curve, key }`. Order of
 * checks, per certificate from the root down: parse, signature by the
 * previous certificate, CA flag, validity at `atMs`.
 */
async function verifyChain(root, cabundle, leafDer, atMs) {
  const first = cabundle[0];
  if (!bytesEqual(first, root.der)) {
    throw err('RootMismatch', { expected: await root.sha256Hex(), got: await sha256Hex(first) });
  }
  let issuer = parse(first, 0);
  checkCa(issuer);
  checkValidAt(issuer, atMs);
  for (let i = 1; i < cabundle.length; i++) {
    const cert = parse(cabundle[i], i);
    await checkIssuedBy(cert, issuer);
    checkCa(cert);
    checkValidAt(cert, atMs);
    issuer = cert;
  }
  const leaf = parse(leafDer, 'leaf');
  await checkIssuedBy(leaf, issuer);
  if (isCa(leaf)) throw err('LeafIsCa');
  checkValidAt(leaf, atMs);
  return subjectKey(leaf);
}

export { verifyChain };
