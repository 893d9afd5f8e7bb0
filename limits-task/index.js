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
//                     slot's process limit (threads count too: about four
//                     per child) refuses the ones past it: the task then says
//                     `started K of N processes` and fails, and the result
//                     says limit "pids".
//   time <seconds>    wait that long (1 to 3600); the request's timeout ends it.
//   sockets <MiB> [<ballast MiB>]
//                     hold MiB (1 to 4096) in loopback TCP buffers inside the
//                     box, first (optionally) holding the ballast as `memory`
//                     does (1 to 4096). Connection pairs whose accepting end
//                     never reads are written to until the kernel has taken
//                     MiB, takes no more (no progress for 3 s) or 60 s pass;
//                     at most 400 pairs (800 descriptors, under the box's
//                     1024). Only bytes the kernel accepted count (bytesWritten
//                     minus writableLength: Node's own queue is not socket
//                     memory), and only on pairs still connected. The buffers are kernel memory of the task's
//                     sockets: on cgroup v2 (and on v1 with the TCP limit set)
//                     the slot's memory cgroup counts them, so its memory
//                     limit holds them too. Prints `sockets held N MiB in K
//                     pairs` per 32 MiB, then what it held and why it stopped.
//
// Input is bounded, and nothing outlives the run: the box's PID 1 ends every
// process of the task when its main process ends.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');

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
  console.error(
    'usage: memory <MiB 1-4096> | processes <N 1-256> | time <seconds 1-3600> | sockets <MiB 1-4096> [<ballast MiB 1-4096>]',
  );
  process.exit(2);
}

// An argument as an error message shows it: at most 20 characters.
const shown = (text) => (text.length > 20 ? `${text.slice(0, 20)}…` : text);

function bounded(text, max, what) {
  if (text === undefined) usage(`${what} is missing`);
  if (!/^[0-9]+$/.test(text)) usage(`${what} must be a whole number, got ${JSON.stringify(shown(text))}`);
  const n = Number(text);
  if (n < 1 || n > max) usage(`${what} must be between 1 and ${max}, got ${shown(text)}`);
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

// Holds MiB in child processes; returns how many it started.
async function hold(mib) {
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
  return held;
}

async function memory(mib) {
  const held = await hold(mib);
  console.log(JSON.stringify({ mode: 'memory', asked_mib: mib, held_mib: held, processes: children.length }));
}

const MAX_PAIRS = 400;
const SOCKETS_SECONDS = 60;
const STALL_MS = 3000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The kernel's own count of TCP buffer memory (all sockets of the machine, in
// pages), where the box shows it; a cross-check of what the sockets count.
function kernelTcpPages() {
  try {
    const m = /^TCP:.* mem (\d+)/m.exec(fs.readFileSync('/proc/net/sockstat', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

async function sockets(mib, ballast) {
  if (ballast) {
    await hold(ballast);
    console.log(`ballast: holding ${ballast} MiB in ${children.length} processes`);
  }
  const want = mib * MIB;
  const chunk = Buffer.alloc(64 * 1024, 1);
  const tcpBefore = kernelTcpPages();
  const open = [];
  // Accepted ends stay paused: they never read, so what is written stays in
  // the kernel (the sender's queue and the receiver's buffer).
  const server = net.createServer({ pauseOnConnect: true }, (s) => {
    s.on('error', () => {});
    open.push(s);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const writers = [];
  // A pair whose connection closed (its accepting end refused for want of
  // descriptors, say) holds nothing: only live writers count.
  const live = () => writers.filter((c) => !c.destroyed);
  const held = () => live().reduce((sum, c) => sum + c.bytesWritten - c.writableLength, 0);
  let done = false;
  const pump = (c) => {
    while (!done && c.write(chunk));
  };
  // Resolves false when the pair cannot be made (out of descriptors, or
  // not connected within 2 s).
  const connect = () =>
    new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      const timer = setTimeout(() => {
        c.destroy();
        resolve(false);
      }, 2000);
      c.on('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
      c.once('connect', () => {
        clearTimeout(timer);
        writers.push(c);
        open.push(c);
        c.on('drain', () => pump(c));
        pump(c);
        resolve(true);
      });
    });

  const started = Date.now();
  let best = 0;
  let grew = started;
  let reported = 0;
  let stopped;
  for (;;) {
    const now = Date.now();
    const h = held();
    if (h > best) {
      best = h;
      grew = now;
    }
    while (Math.floor(best / (32 * MIB)) > reported) {
      reported++;
      console.log(`sockets held ${reported * 32} MiB in ${live().length} pairs`);
    }
    if (h >= want) stopped = 'asked';
    else if (now - started > SOCKETS_SECONDS * 1000) stopped = 'time';
    else if (now - grew > STALL_MS) stopped = 'refused';
    if (stopped) break;
    // Four more pairs per round, up to the bound: each new pair's buffers
    // start small, so more pairs reach the kernel's limits sooner.
    for (let i = 0; i < 4 && writers.length < MAX_PAIRS; i++) {
      if (!(await connect())) break;
    }
    await sleep(20);
  }
  done = true;
  const final = held();
  const tcpAfter = kernelTcpPages();
  console.log(
    JSON.stringify({
      mode: 'sockets',
      asked_mib: mib,
      ballast_mib: ballast ?? 0,
      held_bytes: final,
      held_mib: Math.floor(final / MIB),
      pairs: live().length,
      closed_pairs: writers.length - live().length,
      stopped,
      seconds: (Date.now() - started) / 1000,
      kernel_tcp_mib: tcpBefore === null || tcpAfter === null ? null : Math.floor(((tcpAfter - tcpBefore) * 4096) / MIB),
    }),
  );
  for (const s of open) s.destroy();
  server.close();
}

async function processes(n) {
  for (let i = 0; i < n; i++) {
    try {
      await start(['-e', IDLE], null);
    } catch (err) {
      // How far it got before the wall (the slot's process limit).
      console.log(`started ${i} of ${n} processes`);
      throw err;
    }
  }
  console.log(JSON.stringify({ mode: 'processes', asked: n, started: children.length }));
}

async function time(seconds) {
  console.log(`waiting ${seconds} s`);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  console.log(JSON.stringify({ mode: 'time', waited_s: seconds }));
}

async function main() {
  const [mode, value, ...rest] = process.argv.slice(2);
  // How many arguments each mode takes after its first.
  const optional = new Map([['memory', 0], ['processes', 0], ['time', 0], ['sockets', 1]]);
  if (mode === undefined) usage('no mode given');
  if (!optional.has(mode)) usage(`unknown mode ${JSON.stringify(shown(mode))}`);
  const extra = rest.length - optional.get(mode);
  if (extra > 0) usage(`too many arguments for ${mode}: ${extra} more than it takes`);
  switch (mode) {
    case 'memory':
      return memory(bounded(value, 4096, 'MiB'));
    case 'processes':
      return processes(bounded(value, 256, 'N'));
    case 'time':
      return time(bounded(value, 3600, 'seconds'));
    case 'sockets':
      return sockets(bounded(value, 4096, 'MiB'), rest[0] === undefined ? undefined : bounded(rest[0], 4096, 'ballast MiB'));
    default:
      throw new Error(`mode ${mode} has no case`);
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
