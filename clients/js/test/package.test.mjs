// The package as a consumer sees it: one implementation under both `import`
// and `require`, declarations for every export, no dependencies, and a clean
// `npm pack` tarball.

import test from 'node:test';
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import * as esm from 'nautilus-client';
import { PACKAGE_DIR } from './helpers/docs.mjs';

const require = createRequire(import.meta.url);
const cjs = require('nautilus-client');
const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8'));

test('import and require give the very same objects', () => {
  const names = Object.keys(cjs).sort();
  assert.deepStrictEqual(Object.keys(esm).filter((n) => n !== 'default').sort(), names);
  for (const name of names) assert.strictEqual(esm[name], cjs[name], name);
  assert.strictEqual(esm.default, cjs);
  // So an error thrown by code loaded one way is an instance of the class seen the other way.
  try {
    cjs.verifyAttestation(new Uint8Array([0xff]));
    assert.fail('verified');
  } catch (e) {
    assert.ok(e instanceof esm.AttestationError);
  }
});

test('index.d.ts declares exactly the runtime exports', () => {
  const dts = fs.readFileSync(path.join(PACKAGE_DIR, 'index.d.ts'), 'utf8');
  const declared = [...dts.matchAll(/^export (?:declare )?(?:function|class|const) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepStrictEqual(declared, Object.keys(cjs).sort());
  assert.strictEqual(pkg.types, './index.d.ts');
  assert.strictEqual(pkg.exports['.'].types, './index.d.ts');
});

test('no dependencies, a lockfile, Node >= 18, the CLI as bin', () => {
  for (const field of ['dependencies', 'devDependencies', 'optionalDependencies', 'peerDependencies']) {
    assert.strictEqual(pkg[field], undefined, field);
  }
  const lock = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package-lock.json'), 'utf8'));
  assert.strictEqual(lock.name, pkg.name);
  assert.strictEqual(lock.version, pkg.version);
  assert.deepStrictEqual(Object.keys(lock.packages), [''], 'nothing to install');
  assert.strictEqual(pkg.engines.node, '>=18');
  assert.deepStrictEqual(pkg.bin, { 'nautilus-verify': 'bin/nautilus-verify.js' });
  const bin = fs.readFileSync(path.join(PACKAGE_DIR, pkg.bin['nautilus-verify']), 'utf8');
  assert.ok(bin.startsWith('#!/usr/bin/env node\n'));
  assert.ok(fs.statSync(path.join(PACKAGE_DIR, pkg.bin['nautilus-verify'])).mode & 0o111, 'executable');
});

test('npm pack makes a tarball of the library, the CLI, the declarations and the README only', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--offline'], {
    cwd: PACKAGE_DIR,
    encoding: 'utf8',
    env: { ...process.env, npm_config_loglevel: 'silent', npm_config_update_notifier: 'false' },
  });
  const [report] = JSON.parse(out);
  const files = report.files.map((f) => f.path).sort();
  const lib = fs
    .readdirSync(path.join(PACKAGE_DIR, 'lib'))
    .map((f) => `lib/${f}`)
    .sort();
  assert.deepStrictEqual(files, ['README.md', 'bin/nautilus-verify.js', 'index.d.ts', ...lib, 'package.json'].sort());
  assert.ok(!files.some((f) => f.startsWith('test/')), 'no tests or test data');
  assert.strictEqual(report.name, pkg.name);
  assert.ok(report.unpackedSize < 200 * 1024, `${report.unpackedSize} bytes`);
  const readme = fs.readFileSync(path.join(PACKAGE_DIR, 'README.md'), 'utf8');
  for (const word of ['verifyAttestation', 'verifyResult', 'Client', 'nautilus-verify', '## Browsers']) assert.ok(readme.includes(word), word);
});
