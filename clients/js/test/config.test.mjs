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

const read = (text) => readPcrFile(text);
const indices = ({ pcrs }) => [...pcrs].map(([i, v]) => (assert.strictEqual(v.length, 48), i));

/** Asserts a refusal whose message gives `reason` and the accepted formats. */
async function assertRefused(text, reason) {
  const e = await configError(() => read(text), 'PcrFile');
  assert.ok(e.message.includes(reason), `${JSON.stringify(String(text).slice(0, 120))}: ${e.message}`);
  for (const hint of ['nitro-cli describe-eif --eif-path', 'eif_build', '<hex> PCRn']) assert.ok(e.message.includes(hint), `${e.message} lacks ${hint}`);
}

test('the three accepted formats are read and named', async () => {
  const a = 'ab'.repeat(48);
  const b = 'CD'.repeat(48);
  // `nitro-cli describe-eif` of a signed image: PCR8, and members beside Measurements.
  const describe = `{
  "EifVersion": 4,
  "Measurements": {
    "HashAlgorithm": "Sha384 { ... }",
    "PCR0": "${a}",
    "PCR1": "${a}",
    "PCR2": "${b}",
    "PCR8": "${b}"
  },
  "IsSigned": true,
  "CheckCRC": true,
  "ImageName": "nautilus"
}
`;
  let file = read(describe);
  assert.strictEqual(file.format, 'NitroCliJson');
  assert.strictEqual(file.description, 'nitro-cli JSON ({"Measurements": {...}})');
  assert.deepStrictEqual(indices(file), [0, 1, 2, 8]);
  assert.deepStrictEqual(file.pcrs.get(2), new Uint8Array(48).fill(0xcd));

  file = read(`  {"HashAlgorithm": "Sha384 { ... }", "PCR0": "${a}"}`);
  assert.strictEqual(file.format, 'MeasurementsJson');
  assert.deepStrictEqual(indices(file), [0]);

  // Exactly what eif_build writes (no final newline), and the same with CRLF,
  // a final newline, blank lines and tabs; as text or as bytes.
  file = read(`${a} PCR0\n${a} PCR1\n${b} PCR2`);
  assert.strictEqual(file.format, 'EifBuildText');
  assert.deepStrictEqual(indices(file), [0, 1, 2]);
  file = read(Buffer.from(`\r\n${b}\tPCR8\r\n\n  ${a}  PCR3 \r\n`));
  assert.strictEqual(file.format, 'EifBuildText');
  assert.deepStrictEqual(indices(file), [3, 8]);
});

test('anything else is refused, naming the accepted formats', async () => {
  const a = 'ab'.repeat(48);
  const nested = (inner) => `{"Measurements": ${inner}}`;
  const cases = [
    // Captures: status lines before the JSON (`build-enclave 2>&1`, AWS eif_build's stdout).
    [`Start building the Enclave Image...\nEnclave Image successfully created.\n${nested(`{"PCR0": "${a}"}`)}`, 'line 1 is not `<hex> PCRn`: "Start building'],
    [`Output file: nitro.eif\n{"PCR0": "${a}"}`, 'line 1 is not'],
    ['', 'no PCR0-PCR8 values'],
    ['  \n', 'no PCR0-PCR8 values'],
    ['[]', 'line 1 is not'],
    ['{', 'not valid JSON'],
    [`{"PCR0": "${a}"} trailing`, 'not valid JSON'],
    [nested('3'), '"Measurements" is not an object'],
    [nested('{}'), 'no PCR0-PCR8 values'],
    ['{"HashAlgorithm": "Sha384 { ... }"}', 'no PCR0-PCR8 values'],
    [`{"HashAlgorithm": "Sha256", "PCR0": "${a}"}`, 'HashAlgorithm is "Sha256", not Sha384'],
    [`{"HashAlgorithm": 384, "PCR0": "${a}"}`, 'not Sha384'],
    // A describe-eif output whose Measurements went missing is not a measurements object.
    [`{"EifVersion": 4, "PCR0": "${a}"}`, 'unexpected member "EifVersion"'],
    [nested(`{"PCR9": "${a}"}`), 'unexpected member "PCR9"'],
    [nested(`{"PCR00": "${a}"}`), 'unexpected member "PCR00"'],
    [nested(`{"pcr0": "${a}"}`), 'unexpected member "pcr0"'],
    [nested('{"PCR0": 7}'), 'PCR0 is 7, not a hex string'],
    [nested('{"PCR0": "0011"}'), 'PCR0 has 4 characters; a SHA-384 PCR is 96 hex digits'],
    [nested(`{"PCR0": "${'zz'.repeat(48)}"}`), "PCR0 is not hex: Invalid character 'z' at position 0"],
    [`${a} PCR0\n${a} PCR0`, 'PCR0 appears twice (line 2)'],
    [`${a} PCR0 extra`, 'line 1 is not'],
    [`${a}PCR0`, 'line 1 is not'],
    [`PCR0 ${a}`, 'line 1 is not'],
    [`${a} PCR9`, 'line 1 is not'],
    [`${a} PCR0\n${a.slice(2)} PCR1`, 'PCR1 has 94 characters'],
    [`${'g'.repeat(96)} PCR0`, 'PCR0 is not hex'],
    // A byte-order mark is not a hex digit.
    [`\ufeff${a} PCR0`, 'PCR0 has 97 characters'],
    [`${a} PCR0\n# comment`, 'line 2 is not `<hex> PCRn`: "# comment"'],
    [`${'x'.repeat(70)}`, `line 1 is not \`<hex> PCRn\`: "${'x'.repeat(60)}"…`],
    // Several faults: the first in key order is reported, as serde_json's map orders them.
    [`{"PCR9": 1, "EifVersion": 4}`, 'unexpected member "EifVersion"'],
  ];
  for (const [text, reason] of cases) await assertRefused(text, reason);
  const e = await configError(() => read(Uint8Array.from([0xff, 0xfe, 0x7b])), 'PcrFile');
  assert.match(e.message, /^PCR file not accepted: not UTF-8 text\. Accepted: /);
  await assert.rejects(async () => read(42), TypeError);
});

test('the PCR file size cap is inclusive', async () => {
  const json = `{"PCR0": "${'ab'.repeat(48)}"}`;
  const text = `${'ab'.repeat(48)} PCR0`;
  for (const valid of [json, text]) {
    const atCap = valid + ' '.repeat(MAX_PCR_FILE_LEN - valid.length);
    assert.strictEqual(Buffer.byteLength(atCap), MAX_PCR_FILE_LEN);
    read(atCap);
    await assertRefused(`${atCap} `, `${MAX_PCR_FILE_LEN + 1} bytes, more than the ${MAX_PCR_FILE_LEN}-byte limit`);
  }
});

test('PCR sets given in code are validated like files', async () => {
  const at = { at: 'document' };
  await configError(() => verifyAttestation(document(BASE), { ...at, pcrs: { 32: pcr } }), 'PcrIndexOutOfRange');
  await configError(() => verifyAttestation(document(BASE), { ...at, pcrs: new Map([[0, new Uint8Array(20)]]) }), 'PcrLength', { index: 0, len: 20 });
  await assert.rejects(async () => verifyAttestation(document(BASE), { ...at, pcrs: { x: pcr } }), TypeError);
  await assert.rejects(async () => verifyAttestation(document(BASE), { ...at, pcrs: { 0: 'not hex' } }), TypeError);
  await assert.rejects(async () => verifyAttestation(document(BASE), { at: 'yesterday' }), TypeError);
  await assert.rejects(async () => verifyAttestation(document(BASE), { ...at, maxAgeSecs: -1 }), TypeError);
  await assert.rejects(async () => verifyAttestation('not bytes', at), TypeError);
});

test('alternative roots must be certificates', async () => {
  await configError(() => TrustedRoot.fromDer(Buffer.from('not a certificate')), 'InvalidRoot');
  await configError(() => TrustedRoot.fromPem('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), 'InvalidRoot');
  await configError(() => TrustedRoot.fromPem('-----BEGIN CERTIFICATE-----\nA*AA\n-----END CERTIFICATE-----\n'), 'InvalidRoot');
  await configError(() => TrustedRoot.fromPem('just text'), 'InvalidRoot');
  // A PEM private key (or anything not labelled CERTIFICATE) is refused by label.
  const pem = fs.readFileSync(path.join(DATA_DIR, 'aws_nitro_root_g1.pem'), 'utf8');
  const e = await configError(() => TrustedRoot.fromPem(pem.replaceAll('CERTIFICATE', 'PRIVATE KEY')), 'InvalidRoot');
  assert.match(e.message, /^root certificate is not valid PEM\/DER: PEM label is "PRIVATE KEY", expected "CERTIFICATE"$/);
  // Any certificate can be named as the root explicitly; only the embedded AWS root is the default.
  assert.strictEqual(await TrustedRoot.fromPem(pem).sha256Hex(), AWS_NITRO_ROOT_G1_SHA256);
  // A root given to verifyAttestation as PEM text or DER bytes.
  await verifyAttestation(document(BASE), { at: 'document', root: pem });
  await verifyAttestation(document(BASE), { at: 'document', root: TrustedRoot.awsNitro().der });
  await configError(() => verifyAttestation(document(BASE), { at: 'document', root: 'nonsense' }), 'InvalidRoot');
});
