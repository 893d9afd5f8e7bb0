'use strict';
// The limits demo. The attested manifest lists the limits every run gets
// (a memory limit, a process limit, a timeout); this task asks for what its
// arguments say, so anyone can watch those walls stop a task, on a test VM or
// on a production enclave, and get the result signed:
//
//   memory <MiB>      touch MiB of memory (1 to 4096) in child processes of
//                     at most 128 MiB each, one after the other. Every process
//                     stays far below its own RLIMIT_DATA, so only a limit on
//                     the task as a whole (the slot's memory cgroup) can stop
//                     it: the result then says signal SIGKILL and limit
//                     "memory". Below the limit it prints what it held.
//   processes <N>     start N child processes (1 to 256) that wait; the
//                     slot's process limit refuses the ones past it.
//   time <seconds>    wait that long (1 to 3600); the request's timeout ends it.
//
// Input is bounded, and nothing outlives the run: the box's PID 1 ends every
// process of the task when its main process ends.

const { spawn } = require('node:child_process');

const MIB = 1 << 20;
// Per child: far below any per-process limit the runner sets (RLIMIT_DATA is
// the slot's memory limit, at least 64 MiB... plus node's own ~50 MiB of data).
const CHUNK_MIB = 128;

// A child: allocate and touch its share in 16 MiB buffers, report each step
// on stdout ("touched <bytes>"), say "held" and wait to be ended.
const CHILD = `
const want = Number(process.argv[1]);
const held = [];
let touched = 0;
while (touched < want) {
  const n = Math.min(16 * ${MIB}, want - touched);
  held.push(Buffer.alloc(n, 1));
  touched += n;
  process.stdout.write('touched ' + touched + '\\n');
}
process.stdout.write('held\\n');
setInterval(() => {}, 1 << 30);
`;
// A child of the processes mode: just waits.
const IDLE = 'setInterval(() => {}, 1 << 30)';
// Fewer threads per child node (main + one V8 worker + libuv's).
const CHILD_FLAGS = ['--v8-pool-size=1'];

function usage(message) {
  console.error(`limits-task: ${message}`);
  console.error('usage: memory <MiB 1-4096> | processes <N 1-256> | time <seconds 1-3600>');
  process.exit(2);
}

function bounded(text, max, what) {
  if (!/^[0-9]{1,6}$/.test(text ?? '')) usage(`${what} must be a whole number, got ${JSON.stringify(text)}`);
  const n = Number(text);
  if (n < 1 || n > max) usage(`${what} must be between 1 and ${max}, got ${n}`);
  return n;
}

const children = [];
function endChildren() {
  for (const c of children) c.kill('SIGKILL');
}

// Starts one child; resolves once it printed `until` (its stdout's lines go
// to onLine), rejects when it could not start or ended first.
function start(args, until, onLine = () => {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...CHILD_FLAGS, ...args], {
      stdio: ['ignore', until ? 'pipe' : 'ignore', 'inherit'],
    });
    children.push(child);
    child.on('error', reject);
    child.on('exit', (code, signal) =>
      reject(new Error(`child ${children.length} ended (${signal ?? `exit ${code}`})`)),
    );
    if (!until) {
      child.on('spawn', resolve);
      return;
    }
    let buffered = '';
    child.stdout.on('data', (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line === until) resolve();
        else onLine(line);
      }
    });
  });
}

async function memory(mib) {
  let held = 0;
  for (let i = 0; held < mib; i++) {
    const share = Math.min(CHUNK_MIB, mib - held);
    let touched = 0;
    await start(['-e', CHILD, String(share * MIB)], 'held', (line) => {
      const n = Number(line.replace('touched ', ''));
      // One progress line per 64 MiB, so the output stays small.
      if (Math.floor((held * MIB + n) / (64 * MIB)) > Math.floor((held * MIB + touched) / (64 * MIB))) {
        console.log(`touched ${held + Math.floor(n / MIB)} MiB in ${i + 1} processes`);
      }
      touched = n;
    });
    held += share;
  }
  console.log(JSON.stringify({ mode: 'memory', asked_mib: mib, held_mib: held, processes: children.length }));
}

async function processes(n) {
  for (let i = 0; i < n; i++) await start(['-e', IDLE], null);
  console.log(JSON.stringify({ mode: 'processes', asked: n, started: children.length }));
}

async function time(seconds) {
  console.log(`waiting ${seconds} s`);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  console.log(JSON.stringify({ mode: 'time', waited_s: seconds }));
}

async function main() {
  const [mode, value, ...rest] = process.argv.slice(2);
  if (rest.length > 0) usage(`one mode and one number, got ${rest.length} more arguments`);
  switch (mode) {
    case 'memory':
      return memory(bounded(value, 4096, 'MiB'));
    case 'processes':
      return processes(bounded(value, 256, 'N'));
    case 'time':
      return time(bounded(value, 3600, 'seconds'));
    default:
      return usage(`unknown mode ${JSON.stringify(mode ?? '')}`);
  }
}

main().then(
  () => {
    endChildren();
    process.exitCode = 0;
  },
  (err) => {
    endChildren();
    console.error(`limits-task: stopped: ${err.message}`);
    process.exitCode = 1;
  },
);
