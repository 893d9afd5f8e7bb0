'use strict';
// Example Nautilus task.
//
// Arguments are numbers; the task reports their count, sum, mean and the
// SHA-256 of the canonical input. With no arguments it works on 1..10.
// Any non-numeric argument is an error (exit 1), so callers can see both
// paths through the signed result.

const crypto = require('node:crypto');
const { setTimeout: sleep } = require('node:timers/promises');

let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    console.error(`⚠️ Received ${sig}, stopping`);
    process.exitCode = sig === 'SIGINT' ? 130 : 143;
    // Let pending writes flush before leaving.
    setImmediate(() => process.exit());
  });
}

function parseNumbers(args) {
  if (args.length === 0) return Array.from({ length: 10 }, (_, i) => i + 1);
  return args.map((a) => {
    const n = Number(a);
    if (a.trim() === '' || !Number.isFinite(n)) {
      throw new Error(`argument is not a finite number: ${JSON.stringify(a)}`);
    }
    return n;
  });
}

async function digest(text) {
  // Async on purpose: stands in for real I/O-bound work a task would do.
  const hash = crypto.createHash('sha256');
  hash.update(text);
  await sleep(10);
  return hash.digest('hex');
}

async function main() {
  console.log('🚀 Task starting...');
  const numbers = parseNumbers(process.argv.slice(2));
  const sum = numbers.reduce((a, b) => a + b, 0);
  const result = {
    count: numbers.length,
    sum,
    mean: sum / numbers.length,
    min: Math.min(...numbers),
    max: Math.max(...numbers),
    sha256: await digest(JSON.stringify(numbers)),
  };
  if (stopping) return;
  console.log(`✅ Result: ${JSON.stringify(result)}`);
}

main().then(
  () => {
    if (process.exitCode === undefined) process.exitCode = 0;
  },
  (err) => {
    console.error(`❌ Error: ${err.message}`);
    process.exitCode = 1;
  },
);
