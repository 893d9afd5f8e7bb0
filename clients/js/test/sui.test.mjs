// Every byte claim of docs/sui.md, checked with Sui's own JavaScript: the
// structs declared with @mysten/bcs as the guide declares them in Move
// (`Option<u32>` for exit_code, strings as strings) must reproduce the signed
// bytes, and @mysten/sui's Secp256r1PublicKey (what `ecdsa_r1::secp256r1_verify`
// with hash flag 1 computes: ECDSA P-256 over SHA-256 of the message) must
// verify them with the 33-byte compressed key the enclave attests. On the
// pinned vectors and on live dev-server results, in both forms.

import test from 'node:test';
import assert from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { bcs, fromHex, toHex } from '@mysten/bcs';
import { Secp256r1PublicKey } from '@mysten/sui/keypairs/secp256r1';
import { signingBytes, verifyAttestation, TrustedRoot } from 'nautilus-client';
import { REPO_DIR } from './helpers/docs.mjs';
import { startServer } from './helpers/server.mjs';

// The declarations of docs/sui.md, field for field.
const common = {
  task_id: bcs.string(),
  task_path: bcs.string(),
  task_digest: bcs.string(),
  args: bcs.vector(bcs.string()),
  stdin_sha256: bcs.option(bcs.string()),
  nonce: bcs.option(bcs.string()),
  status: bcs.string(),
  exit_code: bcs.option(bcs.u32()),
  signal: bcs.option(bcs.string()),
};
const Resources = bcs.struct('Resources', { cpu_time_ms: bcs.u64(), peak_memory_bytes: bcs.u64() });
const EgressEntry = bcs.struct('EgressEntry', {
  host: bcs.string(), port: bcs.u16(), connections: bcs.u64(), bytes_out: bcs.u64(), bytes_in: bcs.u64(),
});
const tail = {
  stdout_truncated: bcs.bool(),
  stderr_truncated: bcs.bool(),
  execution_time_ms: bcs.u64(),
  limit: bcs.option(bcs.string()),
  resources: bcs.option(Resources),
  egress: bcs.vector(EgressEntry),
};
const TaskResult = bcs.struct('TaskResult', { ...common, stdout: bcs.string(), stderr: bcs.string(), ...tail });
const CompactTaskResult = bcs.struct('CompactTaskResult', {
  ...common,
  stdout_sha256: bcs.string(),
  stdout_len: bcs.u64(),
  stderr_sha256: bcs.string(),
  stderr_len: bcs.u64(),
  ...tail,
});
const IntentMessage = (T) => bcs.struct('IntentMessage', { intent: bcs.u8(), timestamp_ms: bcs.u64(), data: T });

/** The message bytes a contract rebuilds from the JSON fields with the declared structs. */
function suiBytes(message) {
  const compact = Object.hasOwn(message.data, 'stdout_sha256');
  return IntentMessage(compact ? CompactTaskResult : TaskResult).serialize(message).toBytes();
}

/** The three arguments of `secp256r1_verify(sig, pk, msg, 1)` and what Sui's verifier says of them. */
async function suiVerify(message, signatureHex, publicKeyHex) {
  const sig = fromHex(signatureHex);
  const pk = fromHex(publicKeyHex);
  const msg = suiBytes(message);
  assert.strictEqual(sig.length, 64, 'signature: r || s, 32 bytes each');
  assert.strictEqual(pk.length, 33, 'public key: compressed SEC1');
  assert.ok(pk[0] === 2 || pk[0] === 3);
  assert.strictEqual(msg[0], message.intent, 'msg starts with the intent byte');
  return { msg, ok: await new Secp256r1PublicKey(pk).verify(msg, sig) };
}

const VECTORS = path.join(REPO_DIR, 'src/result-signing/tests/vectors');
const names = fs.readdirSync(VECTORS).filter((n) => n.endsWith('.json')).sort();
const load = (...p) => JSON.parse(fs.readFileSync(path.join(VECTORS, ...p), 'utf8'));

test('the pinned vectors, full and compact: Sui BCS gives the signed bytes and Secp256r1PublicKey verifies them', async () => {
  assert.ok(names.length >= 3);
  for (const name of names) {
    for (const v of [load(name), load('compact', name)]) {
      const { msg, ok } = await suiVerify(v.message, v.signature, v.public_key);
      assert.strictEqual(toHex(msg), v.bcs, `${name} intent ${v.message.intent}`);
      assert.deepStrictEqual(msg, signingBytes(v.message));
      assert.ok(ok, `${name} intent ${v.message.intent}: Sui's verifier refused`);
      // Any other message: refused. The intent byte alone is enough.
      const other = Uint8Array.from(msg);
      other[0] ^= 1;
      assert.strictEqual(await new Secp256r1PublicKey(fromHex(v.public_key)).verify(other, fromHex(v.signature)), false);
    }
    // Only the compact form fits a Sui transaction argument (16 KiB) whatever the output.
    const c = load('compact', name);
    assert.ok(c.bcs.length / 2 < 1024, `${name}: ${c.bcs.length / 2} bytes`);
  }
  // The sizes docs/sui.md quotes: v2's full message (a 16 KiB stderr) is over one argument, its compact form is not.
  const size = (...p) => load(...p).bcs.length / 2;
  assert.deepStrictEqual([size('task_result_v1.json'), size('compact', 'task_result_v1.json')], [192, 324]);
  assert.deepStrictEqual([size('task_result_v2.json'), size('compact', 'task_result_v2.json')], [17036, 421]);
  assert.ok(size('task_result_v2.json') > 16 * 1024);
});

test('exit_code: Option<u32> in Move is the same bytes as the signed Option<i32> for every exit status', () => {
  const I32 = bcs.struct('E', { exit_code: bcs.option(bcs.u32()) });
  for (const code of [0, 1, 3, 127, 255]) {
    const le = new Uint8Array(4);
    new DataView(le.buffer).setInt32(0, code, true);
    assert.deepStrictEqual(I32.serialize({ exit_code: code }).toBytes(), Uint8Array.of(1, ...le));
  }
  assert.deepStrictEqual(I32.serialize({ exit_code: null }).toBytes(), Uint8Array.of(0));
});

test('live dev-server results, full and compact, verify with Sui BCS and Secp256r1PublicKey under the attested key', { timeout: 120_000 }, async (t) => {
  const server = await startServer();
  t.after(server.stop);
  const base = server.base.replace(/\/$/, '');
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const { attestation } = await (await fetch(`${base}/get_attestation?nonce=${toHex(nonce)}`)).json();
  const enclave = await verifyAttestation(fromHex(attestation), { root: TrustedRoot.fromPem(server.rootPem), nonce, allowDebug: true });
  for (const signing of ['full', 'compact']) {
    const response = await fetch(`${base}/process_data`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ payload: { task_path: 'nodejs-task', args: ['6'], nonce: 'c0ffee', signing } }),
    });
    const signed = await response.json();
    // JSON numbers for u64 are exact here (ms values below 2^53); @mysten/bcs takes them as is.
    const { msg, ok } = await suiVerify(signed.response, signed.signature, enclave.public_key);
    assert.deepStrictEqual(msg, signingBytes(signed.response), signing);
    assert.ok(ok, `${signing}: Sui's verifier refused a live result`);
    assert.strictEqual(msg[0], signing === 'full' ? 0 : 1);
    if (signing === 'compact') assert.ok(msg.length < 1024, `${msg.length} bytes`);
  }
});
