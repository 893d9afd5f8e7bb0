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
import * as core from 'nautilus-client/core';
import { PACKAGE_DIR } from './helpers/docs.mjs';

const require = createRequire(import.meta.url);
const cjs = require('nautilus-client');
const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8'));

test('import and require give the very same objects; the core is the Node entry minus Client', async () => {
  const names = Object.keys(cjs).sort();
  assert.deepStrictEqual(Object.keys(esm).sort(), names);
  for (const name of names) assert.strictEqual(esm[name], cjs[name], name);
  // So an error thrown by code loaded one way is an instance of the class seen the other way.
  await assert.rejects(cjs.verifyAttestation(new Uint8Array([0xff])), (e) => e instanceof esm.AttestationError);
  assert.deepStrictEqual(Object.keys(core).sort(), names.filter((n) => n !== 'Client'));
  for (const name of Object.keys(core)) assert.strictEqual(core[name], esm[name], name);
});

test('the core imports no Node built-in, Buffer or process, module by module', () => {
  const libDir = path.join(PACKAGE_DIR, 'lib');
  const seen = new Set();
  const visit = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = fs.readFileSync(path.join(libDir, file), 'utf8');
    for (const [, spec] of text.matchAll(/^(?:import|export)[^'"]*from '([^']+)'/gm)) {
      assert.ok(spec.startsWith('./'), `${file} imports ${spec}`);
      visit(spec.slice(2));
    }
    const code = text.replace(/\/\/.*$/gm, '');
    for (const word of ['Buffer', 'process.', 'require(', 'node:']) assert.ok(!code.includes(word), `${file} uses ${word}`);
  };
  visit('index.js');
  assert.ok(!seen.has('client.js') && !seen.has('node.js'));
  assert.ok(seen.has('webcrypto.js') && seen.has('result.js'));
});

test('index.d.ts declares exactly the runtime exports', async () => {
  const dts = fs.readFileSync(path.join(PACKAGE_DIR, 'index.d.ts'), 'utf8');
  const declared = [...dts.matchAll(/^export (?:declare )?(?:function|class|const) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepStrictEqual(declared, Object.keys(esm).sort());
  assert.strictEqual(pkg.types, './index.d.ts');
  assert.strictEqual(pkg.exports['.'].types, './index.d.ts');
});

test('no runtime dependencies, locked dev dependencies, Node >= 18, the CLI as bin', async () => {
  for (const field of ['dependencies', 'optionalDependencies', 'peerDependencies']) {
    assert.strictEqual(pkg[field], undefined, field);
  }
  const lock = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package-lock.json'), 'utf8'));
  assert.strictEqual(lock.name, pkg.name);
  assert.strictEqual(lock.version, pkg.version);
  // Every installed package is a dev dependency (tests only), pinned with an integrity hash.
  for (const [where, entry] of Object.entries(lock.packages)) {
    if (where === '') continue;
    assert.ok(entry.dev, `${where} is a dev dependency`);
    assert.ok(entry.integrity, `${where} is locked`);
  }
  for (const name of Object.keys(pkg.devDependencies)) assert.ok(lock.packages[`node_modules/${name}`], name);
  assert.strictEqual(pkg.engines.node, '>=18');
  assert.deepStrictEqual(pkg.bin, { 'nautilus-verify': 'bin/nautilus-verify.js' });
  const bin = fs.readFileSync(path.join(PACKAGE_DIR, pkg.bin['nautilus-verify']), 'utf8');
  assert.ok(bin.startsWith('#!/usr/bin/env node\n'));
  assert.ok(fs.statSync(path.join(PACKAGE_DIR, pkg.bin['nautilus-verify'])).mode & 0o111, 'executable');
});

test('npm pack makes a tarball of the library, the CLI, the declarations and the README only', async () => {
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
