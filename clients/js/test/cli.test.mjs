// `nautilus-verify verify-doc` on real Nitro documents, and the CLI's
// argument errors and exit codes (the twin of
// src/nautilus-client/tests/verify_doc.rs). The online commands are in e2e.test.mjs.

import test from 'node:test';
import assert from 'node:assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { DATA_DIR, PACKAGE_DIR, expectedJson, BASE } from './helpers/docs.mjs';

export const BIN = path.join(PACKAGE_DIR, 'bin', 'nautilus-verify.js');
const NONDEBUG = path.join(DATA_DIR, BASE);
const DEBUG = path.join(DATA_DIR, 'sui_2024-11-14_debug.cbor');

const cli = (args, input) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', input, timeout: 60_000 });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nautilus-verify-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const tmpFile = (name, contents) => {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, contents);
  return p;
};

function assertSucceeded(out) {
  assert.strictEqual(out.status, 0, out.stderr);
  assert.strictEqual(out.stderr, '');
}

test('verifies a real document at its own time and prints its fields as one JSON line', async () => {
  const out = cli(['verify-doc', NONDEBUG, '--at-doc-time']);
  assertSucceeded(out);
  assert.strictEqual(out.stdout.split('\n').length, 2, 'one line');
  const v = JSON.parse(out.stdout);
  const e = expectedJson()[BASE];
  assert.deepStrictEqual(Object.keys(v), ['module_id', 'timestamp_ms', 'digest', 'pcrs', 'public_key', 'user_data', 'nonce', 'debug']);
  assert.strictEqual(v.module_id, e.module_id);
  assert.strictEqual(v.timestamp_ms, e.timestamp_ms);
  for (const [index, value] of Object.entries(e.pcrs)) assert.strictEqual(v.pcrs[index], value, `PCR${index}`);
  assert.strictEqual(v.digest, 'SHA384');
  assert.strictEqual(v.debug, false);
  for (const key of ['public_key', 'user_data', 'nonce']) assert.strictEqual(v[key], e[key], key);

  // Hex input, a file or stdin (`-`), is the same document.
  const hexText = fs.readFileSync(NONDEBUG).toString('hex') + '\n';
  const fromHex = cli(['verify-doc', tmpFile('doc.hex', hexText), '--hex', '--at-doc-time']);
  assertSucceeded(fromHex);
  assert.deepStrictEqual(JSON.parse(fromHex.stdout), v);
  const fromStdin = cli(['verify-doc', '-', '--at-doc-time'], fs.readFileSync(NONDEBUG));
  assertSucceeded(fromStdin);
  assert.deepStrictEqual(JSON.parse(fromStdin.stdout), v);
  // --at and --max-age-secs, as numbers.
  const at = cli(['verify-doc', NONDEBUG, '--at', String(e.timestamp_ms + 600_000), '--max-age-secs', '601']);
  assertSucceeded(at);
});

test('hex or JSON given without --hex is named, with the flag', () => {
  const hexText = fs.readFileSync(NONDEBUG).toString('hex') + '\n';
  const hex = cli(['verify-doc', tmpFile('doc-nohex.hex', hexText), '--at-doc-time']);
  assert.strictEqual(hex.status, 1, hex.stderr);
  assert.ok(hex.stderr.includes('holds hex text') && hex.stderr.includes('--hex'), hex.stderr);
  const json = cli(['verify-doc', tmpFile('doc.json', JSON.stringify({ attestation: hexText.trim() })), '--at-doc-time']);
  assert.strictEqual(json.status, 1, json.stderr);
  assert.ok(json.stderr.includes('holds JSON') && json.stderr.includes('`attestation` field') && json.stderr.includes('--hex'), json.stderr);
});

test('no arguments print the usage on stderr and fail', () => {
  const out = cli([]);
  assert.strictEqual(out.status, 1, out.stderr);
  assert.ok(out.stderr.includes('Usage:') && out.stderr.includes('verify-doc') && out.stderr.includes('run'), out.stderr);
  assert.ok(!out.stderr.includes('error:'), out.stderr);
  assert.strictEqual(out.stdout, '');
});

test('failures exit 1 with one line of reason', async () => {
  const pcrs = tmpFile('pcrs.json', JSON.stringify({ Measurements: { PCR0: '11'.repeat(48) } }));
  const eifLines = tmpFile('pcrs.txt', `${'11'.repeat(48)} PCR0\n`);
  const cases = [
    [[NONDEBUG], 'not valid at'],
    [[DEBUG, '--at-doc-time'], 'debug-mode'],
    [[NONDEBUG, '--at-doc-time', '--pcrs', pcrs], 'PCR0 mismatch'],
    [[NONDEBUG, '--at-doc-time', '--pcrs', eifLines], 'PCR0 mismatch'],
    [[NONDEBUG, '--at-doc-time', '--nonce', 'abcd'], 'nonce mismatch'],
    [[NONDEBUG, '--at-doc-time', '--nonce', 'xyz'], '--nonce is not valid hex'],
    [['/nonexistent/doc.cbor'], 'cannot open /nonexistent/doc.cbor'],
    [[NONDEBUG, '--hex'], '--hex file is not'],
    [[NONDEBUG, '--root', pcrs], `--root ${pcrs}: root certificate is not valid PEM/DER`],
    [[NONDEBUG, '--pcrs', NONDEBUG], `--pcrs ${NONDEBUG}: PCR file not accepted: not UTF-8 text`],
    [[NONDEBUG, '--pcrs', tmpFile('bad.pcrs', 'PCR0 = 1')], 'nitro-cli describe-eif --eif-path'],
    [[tmpFile('big', Buffer.alloc(1024 * 1024 + 1))], 'is larger than 1048576 bytes'],
    [[tmpFile('junk', 'junk')], 'malformed CBOR in the COSE_Sign1 structure'],
  ];
  for (const [args, reason] of cases) {
    const out = cli(['verify-doc', ...args]);
    assert.strictEqual(out.status, 1, `${args}: ${out.stderr}`);
    // One line of reason, after the note saying how a readable `--pcrs` was read.
    const lines = out.stderr.trim().split('\n');
    const reasons = lines.filter((l) => !l.startsWith('note: --pcrs'));
    assert.strictEqual(reasons.length, 1, out.stderr);
    assert.ok(lines.length - reasons.length <= Number(args.includes('--pcrs')), out.stderr);
    assert.ok(reasons[0].startsWith('error: '), out.stderr);
    assert.ok(out.stderr.includes(reason), `${args}: ${out.stderr}`);
    assert.strictEqual(out.stdout, '');
  }
  assertSucceeded(cli(['verify-doc', DEBUG, '--at-doc-time', '--allow-debug']));
});

/** The PCR files a build produces for a real document, with PCR `wrong` altered. */
function pcrFiles(name, wrong) {
  const e = expectedJson()[name].pcrs;
  const pcr = (i) => (i === wrong ? e[i].slice(0, -1) + (e[i].endsWith('0') ? '1' : '0') : e[i]);
  const measurements = `{"HashAlgorithm": "Sha384 { ... }", "PCR0": "${pcr('0')}", "PCR1": "${pcr('1')}", "PCR2": "${pcr('2')}", "PCR8": "${pcr('8')}"}`;
  return [
    ['nitro-cli JSON', `{\n  "EifVersion": 4,\n  "Measurements": ${measurements},\n  "IsSigned": false\n}\n`],
    ['measurements JSON', measurements],
    ['eif_build text', `${pcr('0')} PCR0\n${pcr('1')} PCR1\n${pcr('2')} PCR2`],
  ];
}

test('PCR files in each accepted format verify, a wrong PCR is refused, and the note says how the file was read', async () => {
  for (const doc of [BASE, 'signal_svr2_2023-05-24.cbor']) {
    for (const wrong of [null, '0', '2']) {
      for (const [format, content] of pcrFiles(doc, wrong)) {
        const file = tmpFile(`pcrs-${format.replace(/\W/g, '')}`, content);
        const out = cli(['verify-doc', path.join(DATA_DIR, doc), '--at-doc-time', '--pcrs', file]);
        assert.ok(out.stderr.startsWith(`note: --pcrs ${file} read as ${format}`), `${doc} ${format}: ${out.stderr}`);
        if (wrong === null) {
          assert.strictEqual(out.status, 0, out.stderr);
          assert.ok(out.stderr.includes('expecting PCR0, PCR1, PCR2'), out.stderr);
        } else {
          assert.strictEqual(out.status, 1, `${doc} ${format}: ${out.stderr}`);
          assert.ok(out.stderr.includes(`error: PCR${wrong} mismatch`), out.stderr);
          assert.strictEqual(out.stdout, '');
        }
      }
    }
  }
});

test('argument errors are one line with the documented exit codes', async () => {
  // (No arguments at all print the usage: tested above.)
  const cases = [
    [['verify-doc'], 1],
    [['verify-doc', 'x.cbor', '--bogus'], 1],
    [['verify-doc', 'x.cbor', 'y.cbor'], 1],
    [['verify-doc', 'x.cbor', '--at'], 1],
    [['verify-doc', 'x.cbor', '--at', 'noon'], 1],
    [['verify-doc', 'x.cbor', '--at-doc-time', '--at', '5'], 1],
    [['attest'], 1],
    [['frobnicate'], 1],
    [['run', '--url'], 2],
    [['run', '--url', 'http://127.0.0.1:1', '--timeout', 'soon'], 2],
    [['run', '--url', 'http://127.0.0.1:1', 'stray'], 2],
  ];
  for (const [args, code] of cases) {
    const out = cli(args);
    assert.strictEqual(out.status, code, `${args}: ${out.stderr}`);
    assert.strictEqual(out.stderr.trim().split('\n').length, 1, `${args}: ${out.stderr}`);
    assert.match(out.stderr, /^error: .*\(see --help\)\n$/);
    assert.strictEqual(out.stdout, '');
  }
  for (const args of [['--help'], ['run', '--help'], ['verify-doc', '-h']]) {
    const help = cli(args);
    assert.strictEqual(help.status, 0);
    for (const word of ['verify-doc', 'attest', 'run', '--at-doc-time', '--stdin-file', '--allow-debug']) assert.ok(help.stdout.includes(word), word);
  }
  const version = cli(['--version']);
  assert.strictEqual(version.status, 0);
  assert.match(version.stdout, /^nautilus-verify \d+\.\d+\.\d+\n$/);
  // A server that cannot be reached is a run failure: exit 2, one line.
  const unreachable = cli(['run', '--url', 'http://127.0.0.1:1']);
  assert.strictEqual(unreachable.status, 2);
  assert.match(unreachable.stderr, /^error: request to http:\/\/127\.0\.0\.1:1\/get_attestation\?nonce=[0-9a-f]{64} failed: connect ECONNREFUSED/);
  const badUrl = cli(['attest', '--url', 'ftp://x']);
  assert.strictEqual(badUrl.status, 1);
  assert.strictEqual(badUrl.stderr, 'error: invalid server URL "ftp://x": only http:// and https:// are supported\n');
});

test('a closed stdout is not a crash', async () => {
  const child = spawn(process.execPath, [BIN, 'verify-doc', NONDEBUG, '--at-doc-time'], { stdio: ['ignore', 'pipe', 'pipe'] });
  // Close the read end before the CLI writes its answer.
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const code = await new Promise((resolve) => child.on('close', resolve));
  assert.strictEqual(code, 0, stderr);
  assert.ok(!stderr.includes('EPIPE') && !stderr.includes('Error'), stderr);
});
