'use strict';
// Example Nautilus task with an npm dependency (`ms`, installed into the
// image from package-lock.json by `npm ci`).
//
// Each argument is a duration ("2 days", "1h", "90s") or a number of
// milliseconds; the task prints each one converted both ways. With no
// arguments it converts "1 day". An argument `ms` cannot read is an error
// (exit 1).

const ms = require('ms');

function convert(arg) {
  if (/^\s*-?\d+(\.\d+)?\s*$/.test(arg)) {
    const n = Number(arg);
    return { input: arg, ms: n, short: ms(n), long: ms(n, { long: true }) };
  }
  const n = ms(arg);
  if (typeof n !== 'number' || !Number.isFinite(n)) {
    throw new Error(`not a duration: ${JSON.stringify(arg)}`);
  }
  return { input: arg, ms: n, short: ms(n), long: ms(n, { long: true }) };
}

try {
  const args = process.argv.slice(2);
  const results = (args.length ? args : ['1 day']).map(convert);
  console.log(JSON.stringify({ ms_version: require('ms/package.json').version, results }));
} catch (err) {
  console.error(`❌ Error: ${err.message}`);
  process.exitCode = 1;
}
