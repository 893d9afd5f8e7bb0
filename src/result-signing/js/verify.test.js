'use strict';
// Run with `node --test src/result-signing/js/`.
const test = require('node:test');
const assert = require('node:assert');
const path = require('node:path');
const { signingBytes, verifySignedResponse } = require('./verify.js');

const vector = require(path.join(__dirname, '..', 'tests', 'vectors', 'task_result_v1.json'));
const signed = () => ({ response: structuredClone(vector.message), signature: vector.signature });

test('BCS bytes match the Rust vector', () => {
  assert.strictEqual(signingBytes(vector.message).toString('hex'), vector.bcs);
});

test('the vector signature verifies', () => {
  verifySignedResponse(signed(), vector.public_key);
});

test('tampering is detected', () => {
  const tampered = signed();
  tampered.response.data.stdout = 'forged\n';
  assert.throws(() => verifySignedResponse(tampered, vector.public_key), /does not verify/);
  const noNonce = signed();
  noNonce.response.data.nonce = null;
  assert.throws(() => verifySignedResponse(noNonce, vector.public_key), /does not verify/);
});

test('high-S twins are refused', () => {
  const n = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551');
  const s = BigInt('0x' + vector.signature.slice(64));
  const high = signed();
  high.signature = vector.signature.slice(0, 64) + (n - s).toString(16).padStart(64, '0');
  assert.throws(() => verifySignedResponse(high, vector.public_key), /low-S/);
});
