// The 19 real Nitro documents verify at their own timestamps with the
// embedded root and report exactly what expected.json says
// (the twin of src/attestation-verify/tests/real_documents.rs).

import test from 'node:test';
import assert from 'node:assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { verifyAttestation, TrustedRoot, readPcrFile, AWS_NITRO_ROOT_G1_SHA256, AttestationError } from 'nautilus-client';
import { documents, document, expectedJson, DATA_DIR, REPO_DIR, BASE, Cose } from './helpers/docs.mjs';

const atDocTime = { at: 'document' };

test('the embedded root is the pinned AWS root, and the same as the PEM AWS publishes', async () => {
  const root = TrustedRoot.awsNitro();
  assert.strictEqual(await root.sha256Hex(), AWS_NITRO_ROOT_G1_SHA256);
  assert.strictEqual(AWS_NITRO_ROOT_G1_SHA256, '641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b');
  const pem = fs.readFileSync(path.join(DATA_DIR, 'aws_nitro_root_g1.pem'), 'utf8');
  assert.deepStrictEqual(TrustedRoot.fromPem(pem).der, root.der);
  assert.deepStrictEqual(TrustedRoot.fromPemOrDer(Buffer.from(pem)).der, root.der);
  assert.deepStrictEqual(TrustedRoot.fromPemOrDer(root.der).der, root.der);
  // And the same bytes the Rust crate embeds.
  const rustRoot = fs.readFileSync(path.join(REPO_DIR, 'src/attestation-verify/roots/aws_nitro_root_g1.der'));
  assert.deepStrictEqual(Buffer.from(root.der), rustRoot);
});

test('the copied documents are byte-identical to the Rust crate test data', async () => {
  const rustData = path.join(REPO_DIR, 'src/attestation-verify/tests/data');
  for (const name of fs.readdirSync(DATA_DIR)) {
    assert.deepStrictEqual(fs.readFileSync(path.join(DATA_DIR, name)), fs.readFileSync(path.join(rustData, name)), name);
  }
});

test('every real document verifies and reports the expected fields', async () => {
  const expected = expectedJson();
  for (const [name, bytes] of documents()) {
    const exp = expected[name];
    assert.strictEqual(crypto.createHash('sha256').update(bytes).digest('hex'), exp.sha256, `${name}: not the file expected.json describes`);
    const summary = await verifyAttestation(bytes, { ...atDocTime, allowDebug: true });
    for (const field of ['module_id', 'timestamp_ms', 'digest', 'debug', 'public_key', 'user_data', 'nonce']) {
      assert.strictEqual(summary[field], exp[field], `${name}: ${field}`);
    }
    assert.ok(Object.keys(exp.pcrs).length > 0);
    for (const [index, value] of Object.entries(exp.pcrs)) assert.strictEqual(summary.pcrs[index], value, `${name}: PCR${index}`);
    // All PCRs are reported, in index order, each 48 bytes for SHA384.
    const indices = Object.keys(summary.pcrs).map(Number);
    assert.deepStrictEqual(indices, [...indices].sort((a, b) => a - b));
    for (const v of Object.values(summary.pcrs)) assert.strictEqual(v.length, 96);

    // Debug-mode documents are refused unless explicitly allowed.
    if (exp.debug) {
      await assert.rejects(async () => verifyAttestation(bytes, atDocTime), (e) => e instanceof AttestationError && e.code === 'DebugMode');
    } else {
      await verifyAttestation(bytes, atDocTime);
    }
  }
});

test('the summary has the CLI JSON shape: keys in order, "" for empty and null for absent', async () => {
  const summary = await verifyAttestation(document('blocky_2024-05-07.cbor'), atDocTime);
  assert.deepStrictEqual(Object.keys(summary), ['module_id', 'timestamp_ms', 'digest', 'pcrs', 'public_key', 'user_data', 'nonce', 'debug']);
  assert.strictEqual(summary.timestamp_ms, 1715103786613);
  assert.strictEqual(summary.pcrs['0'].length, 96);
  assert.strictEqual(summary.user_data, '');
  assert.strictEqual(summary.nonce, '');
  const other = await verifyAttestation(document('evervault_beta_nondebug_2022-10-13.cbor'), atDocTime);
  assert.strictEqual(other.public_key, null);
  assert.strictEqual(other.user_data, null);
});

test('PCR files in each format accept a matching document', async () => {
  const exp = expectedJson()[BASE].pcrs;
  const flat = `{"HashAlgorithm": "Sha384 { ... }", "PCR0": "${exp[0]}", "PCR1": "${exp[1]}", "PCR2": "${exp[2]}"}`;
  const nested = `{"Measurements": ${flat}}`;
  const lines = `${exp[0]} PCR0\n${exp[1]} PCR1\n${exp[2]} PCR2`;
  for (const text of [flat, nested, lines]) {
    const { pcrs } = readPcrFile(text);
    assert.strictEqual(pcrs.size, 3);
    await verifyAttestation(document(BASE), { ...atDocTime, pcrs });
  }
  // Hex strings and indices as plain object keys work too.
  await verifyAttestation(document(BASE), { ...atDocTime, pcrs: { 0: exp[0], 8: exp[8] } });
});

test('the matching nonce is accepted, as bytes or as hex', async () => {
  const name = 'anchorage_veracruz_2022-11-09_eu-west-1.cbor';
  const nonce = expectedJson()[name].nonce;
  await verifyAttestation(document(name), { ...atDocTime, nonce });
  await verifyAttestation(document(name), { ...atDocTime, nonce: Buffer.from(nonce, 'hex') });
});

test('tagged and untagged documents are equivalent', async () => {
  const bytes = document(BASE);
  const cose = Cose.decode(bytes);
  assert.strictEqual(cose.tagged, false);
  assert.deepStrictEqual(cose.encode(), bytes, 're-encoder is faithful');
  cose.tagged = true;
  const tagged = cose.encode();
  assert.strictEqual(tagged[0], 0xd2);
  assert.deepStrictEqual(await verifyAttestation(tagged, atDocTime), await verifyAttestation(bytes, atDocTime));
});
