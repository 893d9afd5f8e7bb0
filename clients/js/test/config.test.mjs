// Caller-supplied configuration: PCR files (the formats the Rust client
// reads) and alternative roots (the twin of src/attestation-verify/tests/config.rs).

import test from 'node:test';
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { readPcrFile, TrustedRoot, ConfigError, verifyAttestation, MAX_PCR_FILE_LEN, AWS_NITRO_ROOT_G1_SHA256 } from 'nautilus-client';
import { DATA_DIR, document, BASE } from './helpers/docs.mjs';
import { throwsCode } from './helpers/assert.mjs';

const pcr = 'ab'.repeat(48);

const configError = (fn, code, details) => throwsCode(fn, ConfigError, code, details);

test('nitro-cli measurements JSON, nested or flat, PCR0-PCR8', () => {
  const nitroCli = `{
  "Measurements": {
    "HashAlgorithm": "Sha384 { ... }",
    "PCR0": "${pcr}",
    "PCR1": "${'cd'.repeat(48)}",
    "PCR2": "${'EF'.repeat(48)}",
    "PCR8": "${pcr}"
  }
}`;
  const pcrs = readPcrFile(nitroCli);
  assert.deepStrictEqual([...pcrs.keys()], [0, 1, 2, 8]);
  assert.strictEqual(Buffer.from(pcrs.get(2)).toString('hex'), 'ef'.repeat(48), 'upper-case hex is read');
  const flat = readPcrFile(`{"PCR8": "${pcr}", "PCR0": "${pcr}"}`);
  assert.deepStrictEqual([...flat.keys()], [0, 8], 'sorted by index');
});

test("eif_build's `<hex> PCRn` lines", () => {
  const text = `${pcr} PCR0\n${'cd'.repeat(48)} PCR1\r\n\n${pcr}   PCR2  \n`;
  const pcrs = readPcrFile(text);
  assert.deepStrictEqual([...pcrs.keys()], [0, 1, 2]);
  assert.strictEqual(Buffer.from(pcrs.get(1)).toString('hex'), 'cd'.repeat(48));
});

test('bad PCR files are refused with the reason and the accepted formats', () => {
  const formats = /accepted formats: nitro-cli JSON .* or eif_build lines .*nitro-cli describe-eif --eif-path/;
  const bad = [
    ['[]', /not a JSON object/, true],
    ['{"Measurements": 3}', /"Measurements" is not an object/, true],
    ['{"HashAlgorithm": "Sha384"}', /no PCRn entries/, true],
    ['{"PCRx": "00"}', /bad PCR key "PCRx"/, false],
    ['{"PCR0": 7}', /PCR0 is not a string/, false],
    ['{"PCR0": "zz"}', /PCR0 is not hex/, false],
    ['{', /JSON/, true],
    ['', /empty file/, true],
    ['hello world', /line 1 is not "<hex> PCRn": "hello world"/, true],
    [`${pcr} PCR0\nPCR1: ${pcr}`, /line 2 is not "<hex> PCRn"/, true],
    [`${pcr} PCR0\n${pcr} PCR0`, /PCR0 appears twice/, false],
    [`${pcr}0 PCR0`, /PCR0 on line 1 is not hex/, false],
    [`${pcr} PCRfoo`, /bad PCR key "PCRfoo"/, false],
  ];
  for (const [text, reason, namesFormats] of bad) {
    const e = configError(() => readPcrFile(text), 'PcrFile');
    assert.match(e.message, /^PCR file is invalid: /);
    assert.match(e.message, reason, text);
    if (namesFormats) assert.match(e.message, formats, text);
  }
  configError(() => readPcrFile(`{"PCR32": "${pcr}"}`), 'PcrIndexOutOfRange', { index: '32' });
  configError(() => readPcrFile(`${pcr} PCR99`), 'PcrIndexOutOfRange', { index: '99' });
  const e = configError(() => readPcrFile('{"PCR3": "0011"}'), 'PcrLength', { index: 3, len: 2 });
  assert.strictEqual(e.message, 'PCR3 value is 2 bytes; PCRs are 32, 48 or 64 bytes');
  configError(() => readPcrFile(' '.repeat(MAX_PCR_FILE_LEN + 1)), 'PcrFile');
});

test('PCR sets given in code are validated like files', () => {
  const at = { at: 'document' };
  configError(() => verifyAttestation(document(BASE), { ...at, pcrs: { 32: pcr } }), 'PcrIndexOutOfRange');
  configError(() => verifyAttestation(document(BASE), { ...at, pcrs: new Map([[0, new Uint8Array(20)]]) }), 'PcrLength', { index: 0, len: 20 });
  configError(() => verifyAttestation(document(BASE), { ...at, pcrs: { x: pcr } }), 'PcrFile');
  assert.throws(() => verifyAttestation(document(BASE), { ...at, pcrs: { 0: 'not hex' } }), TypeError);
  assert.throws(() => verifyAttestation(document(BASE), { at: 'yesterday' }), TypeError);
  assert.throws(() => verifyAttestation(document(BASE), { ...at, maxAgeSecs: -1 }), TypeError);
  assert.throws(() => verifyAttestation('not bytes', at), TypeError);
});

test('alternative roots must be certificates', () => {
  configError(() => TrustedRoot.fromDer(Buffer.from('not a certificate')), 'InvalidRoot');
  configError(() => TrustedRoot.fromPem('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), 'InvalidRoot');
  configError(() => TrustedRoot.fromPem('-----BEGIN CERTIFICATE-----\nA*AA\n-----END CERTIFICATE-----\n'), 'InvalidRoot');
  configError(() => TrustedRoot.fromPem('just text'), 'InvalidRoot');
  // A PEM private key (or anything not labelled CERTIFICATE) is refused by label.
  const pem = fs.readFileSync(path.join(DATA_DIR, 'aws_nitro_root_g1.pem'), 'utf8');
  const e = configError(() => TrustedRoot.fromPem(pem.replaceAll('CERTIFICATE', 'PRIVATE KEY')), 'InvalidRoot');
  assert.match(e.message, /^root certificate is not valid PEM\/DER: PEM label is "PRIVATE KEY", expected "CERTIFICATE"$/);
  // Any certificate can be named as the root explicitly; only the embedded AWS root is the default.
  assert.strictEqual(TrustedRoot.fromPem(pem).sha256Hex(), AWS_NITRO_ROOT_G1_SHA256);
  // A root given to verifyAttestation as PEM text or DER bytes.
  verifyAttestation(document(BASE), { at: 'document', root: pem });
  verifyAttestation(document(BASE), { at: 'document', root: TrustedRoot.awsNitro().der });
  configError(() => verifyAttestation(document(BASE), { at: 'document', root: 'nonsense' }), 'InvalidRoot');
});
