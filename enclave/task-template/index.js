'use strict';
// A Nautilus task (made by `make new-task`). It runs as `node index.js ARGS…`:
// the request's `args` are process.argv.slice(2), its `stdin` is standard
// input. What it prints to stdout and stderr, and its exit code, come back
// signed by the enclave. Exit non-zero (or throw) to report a failure.
//
// Dependencies: `npm install <package>` here writes package-lock.json, which
// the image build (`npm ci`) and `make run` install from. Restart the server
// after any change: tasks are read once, at start.

const fs = require('fs');

const args = process.argv.slice(2);
const stdin = fs.readFileSync(0, 'utf8');

console.log(JSON.stringify({ task: 'TASK_NAME', args, stdin_bytes: Buffer.byteLength(stdin) }));
