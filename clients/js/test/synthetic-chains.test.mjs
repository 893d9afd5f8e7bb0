// Chain checks that no real AWS chain can fail, reached with chains built
// from real keys and signatures (the twin of
// src/attestation-verify/tests/synthetic_chains.rs, plus the certificate
// shapes the JS DER reader must refuse). Each negative case differs from
// the verifying positive control in exactly one property.

import test from 'node:test';
import assert from 'node:assert';
import crypto from 'node:crypto';
import { verifyAttestation, TrustedRoot, AttestationError, MAX_CABUNDLE_LEN } from 'nautilus-client';
import {
  Chain,
  makeCa,
  makeLeaf,
  makeDocument,
  generate,
  certificate,
  oid,
  derSeq,
  bool,
  octetString,
  basicConstraints,
  OIDS,
  P256,
  P384,
  DOC_TIMESTAMP_MS,
  LEAF_NOT_BEFORE_MS,
  LEAF_LIFETIME_MS,
} from './helpers/x509.mjs';
import { throwsCode } from './helpers/assert.mjs';

const verify = (root, doc, options = { at: 'document' }) => verifyAttestation(doc, { root: TrustedRoot.fromDer(root.der), ...options });

const assertError = (fn, code, details) => throwsCode(fn, AttestationError, code, details);

test('a well-formed synthetic chain verifies, and only under its own root', async () => {
  const chain = new Chain();
  const summary = await verify(chain.root, chain.document());
  assert.strictEqual(summary.timestamp_ms, DOC_TIMESTAMP_MS);
  assert.strictEqual(summary.module_id, 'i-synthetic-enc0123456789abcdef');
  assert.strictEqual(summary.public_key, Buffer.from('enclave public key').toString('hex'));
  assert.strictEqual(summary.nonce, null);
  assert.strictEqual(summary.debug, false);
  await assertError(() => verify(makeCa('synthetic root'), chain.document()), 'RootMismatch');
});

test('an issuer that is not a CA is refused by position', async () => {
  for (const isCa of ['explicit-no-ca', 'no-ca']) {
    const chain = new Chain();
    const notCa = makeCa('not a CA', { parent: chain.intermediate, isCa });
    const leaf = makeLeaf(notCa, chain.enclave.publicKey);
    const doc = makeDocument([...chain.cabundle(), notCa.der], leaf, chain.enclave.privateKey);
    const e = await assertError(() => verify(chain.root, doc), 'NotACa', { cert: 2 });
    assert.strictEqual(e.message, 'cabundle[2]: basicConstraints says it is not a CA, but it issues the next certificate');
    // The same property on the root itself.
    const root = makeCa('synthetic root', { isCa });
    const intermediate = makeCa('synthetic intermediate', { parent: root });
    const doc2 = makeDocument([root.der, intermediate.der], makeLeaf(intermediate, chain.enclave.publicKey), chain.enclave.privateKey);
    await assertError(() => verify(root, doc2), 'NotACa', { cert: 0 });
  }
});

test('a leaf that is a CA is refused', async () => {
  const chain = new Chain();
  const e = await assertError(() => verify(chain.root, chain.documentWithLeaf(chain.leaf({ isCa: 'ca' }))), 'LeafIsCa');
  assert.strictEqual(e.message, 'leaf certificate is a CA (basicConstraints cA = true)');
  // No basicConstraints at all on the leaf is fine ("not a CA").
  await verify(chain.root, chain.documentWithLeaf(chain.leaf({ isCa: 'no-ca' })));
});

test('P-256 certificate signatures verify', async () => {
  for (const [rootCurve, intermediateCurve] of [[P384, P256], [P256, P256], [P256, P384]]) {
    const root = makeCa('synthetic root', { curve: rootCurve });
    const intermediate = makeCa('synthetic intermediate', { parent: root, curve: intermediateCurve });
    const enclave = generate(P384);
    const leaf = makeLeaf(intermediate, enclave.publicKey);
    // A P-256 issuer signs with ecdsa-with-SHA256: the SHA-256 path is exercised.
    assert.strictEqual(new crypto.X509Certificate(leaf).verify(intermediate.keys.publicKey), true);
    await verify(root, makeDocument([root.der, intermediate.der], leaf, enclave.privateKey));
  }
});

test('a P-256 leaf key is refused for ES384', async () => {
  const chain = new Chain();
  const leaf = chain.leaf({ subjectPublic: generate(P256).publicKey });
  const e = await assertError(() => verify(chain.root, chain.documentWithLeaf(leaf)), 'UnsupportedPublicKey', { cert: 'leaf', reason: 'ES384 needs a P-384 key' });
  assert.strictEqual(e.message, 'leaf certificate: unsupported public key: ES384 needs a P-384 key');
});

test('validity is inclusive at both ends, to the millisecond', async () => {
  const chain = new Chain();
  const doc = chain.document();
  const notBeforeMs = LEAF_NOT_BEFORE_MS;
  const notAfterMs = LEAF_NOT_BEFORE_MS + LEAF_LIFETIME_MS;
  // Age and skew checks off: only certificate validity decides.
  const at = (ms) => ({ at: ms, maxAgeSecs: null, maxFutureSkewSecs: 24 * 60 * 60 });
  for (const ms of [notBeforeMs, notAfterMs]) await verify(chain.root, doc, at(ms));
  for (const ms of [notBeforeMs - 1, notAfterMs + 1]) {
    await assertError(() => verify(chain.root, doc, at(ms)), 'CertificateNotValidAt', {
      cert: 'leaf',
      at_ms: ms,
      not_before_ms: notBeforeMs,
      not_after_ms: notAfterMs,
    });
  }
});

test('an issuer name mismatch under a valid signature is refused', async () => {
  const chain = new Chain();
  // Signed by the intermediate's key, but naming "someone else" as issuer.
  // The signature is checked before the name, so IssuerMismatch (rather than
  // CertificateSignature) also shows that the signature verified.
  const impostor = { cn: 'someone else', keys: chain.intermediate.keys };
  let e = await assertError(() => verify(chain.root, chain.documentWithLeaf(makeLeaf(impostor, chain.enclave.publicKey))), 'IssuerMismatch', { cert: 'leaf' });
  assert.strictEqual(e.message, 'leaf certificate: issuer name does not match the subject of the certificate before it');
  // The same for a CA certificate in the bundle.
  const below = makeCa('below the impostor', { parent: impostor });
  const leaf = makeLeaf(below, chain.enclave.publicKey);
  e = await assertError(() => verify(chain.root, makeDocument([...chain.cabundle(), below.der], leaf, chain.enclave.privateKey)), 'IssuerMismatch', { cert: 2 });
});

test('a cabundle longer than the limit is refused', async () => {
  const cas = [makeCa('synthetic root')];
  while (cas.length <= MAX_CABUNDLE_LEN) cas.push(makeCa('synthetic intermediate', { parent: cas[cas.length - 1] }));
  const enclave = generate(P384);
  const documentUnder = (list) => makeDocument(list.map((c) => c.der), makeLeaf(list[list.length - 1], enclave.publicKey), enclave.privateKey);
  // Exactly at the limit it verifies: the length alone decides below.
  await verify(cas[0], documentUnder(cas.slice(0, MAX_CABUNDLE_LEN)));
  await assertError(() => verify(cas[0], documentUnder(cas)), 'InvalidField', { field: 'cabundle', reason: 'more than 16 certificates' });
});

test('certificate shapes outside the accepted ECDSA profile are refused precisely', async () => {
  const chain = new Chain();
  const leafWith = (opts) => chain.documentWithLeaf(chain.leaf(opts));
  // Signature algorithms other than ecdsa-with-SHA256/384, or with parameters.
  const sha512 = { oid: OIDS.ecdsaWithSha512, hash: 'sha512' };
  let e = await assertError(() => verify(chain.root, leafWith({ algorithm: sha512 })), 'UnsupportedCertSignatureAlgorithm', { cert: 'leaf', oid: OIDS.ecdsaWithSha512 });
  assert.strictEqual(e.message, `leaf certificate: unsupported signature algorithm ${OIDS.ecdsaWithSha512} (only ecdsa-with-SHA256/SHA384)`);
  const withParams = { oid: OIDS.ecdsaWithSha384, hash: 'sha384', params: new Uint8Array([0x05, 0x00]) };
  await assertError(() => verify(chain.root, leafWith({ algorithm: withParams })), 'UnsupportedCertSignatureAlgorithm', { cert: 'leaf', oid: OIDS.ecdsaWithSha384 });
  // Outer and inner algorithm identifiers that differ.
  e = await assertError(() => verify(chain.root, leafWith({ innerAlgorithm: OIDS.ecdsaWithSha256 })), 'CertificateParse');
  assert.strictEqual(e.message, 'leaf certificate: cannot parse certificate: outer and inner signature algorithms differ');
  // Not DER at all.
  await assertError(() => verify(chain.root, chain.documentWithLeaf(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]))), 'CertificateParse');
  // Malformed or repeated basicConstraints.
  const badBc = [derSeq(oid(OIDS.basicConstraints), bool(true), octetString(new Uint8Array([0x30, 0x03, 0x01, 0x01, 0x07])))];
  e = await assertError(() => verify(chain.root, leafWith({ extensions: badBc })), 'BadExtension');
  assert.match(e.message, /^leaf certificate: malformed extension: basicConstraints: /);
  await assertError(() => verify(chain.root, leafWith({ extensions: [...basicConstraints('explicit-no-ca'), ...basicConstraints('explicit-no-ca')] })), 'BadExtension', {
    cert: 'leaf',
    reason: 'basicConstraints appears more than once',
  });
  // An issuer whose key is not ECDSA: RSA, named by position.
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const rsaCa = certificate({
    subject: 'rsa intermediate',
    issuer: chain.intermediate.cn,
    subjectPublic: rsa.publicKey,
    issuerPrivate: chain.intermediate.keys.privateKey,
    notBefore: LEAF_NOT_BEFORE_MS - 1000,
    notAfter: LEAF_NOT_BEFORE_MS + LEAF_LIFETIME_MS,
    isCa: 'ca',
  });
  const leaf = makeLeaf({ cn: 'rsa intermediate', keys: chain.intermediate.keys }, chain.enclave.publicKey);
  e = await assertError(() => verify(chain.root, makeDocument([...chain.cabundle(), rsaCa], leaf, chain.enclave.privateKey)), 'UnsupportedPublicKey');
  assert.strictEqual(e.message, 'cabundle[2]: unsupported public key: algorithm 1.2.840.113549.1.1.1 is not id-ecPublicKey');
});
