'use strict';
// The warm pool's bootstrap: the main module of a `node` the task runner
// starts before any request, in the box of the slot that will run it. It
// waits for its one task on a control pipe (descriptor argv[2]), closes it,
// and runs the task exactly as `node <entry> <args...>` would: same argv,
// cwd, require.main, CommonJS or ES module entry, nothing of this file left
// in require.cache, and no frame of it on the task's stack (the entry runs
// from the tick queue, straight into Node's own runMain).
const fs = require('node:fs');
const fd = Number(process.argv[2]);
// The read end is a blocking pipe (only the runner's write end is
// non-blocking), and libuv retries EINTR: a plain read to end of file.
const chunks = [];
const buf = Buffer.allocUnsafe(64 * 1024);
for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) {
  chunks.push(Buffer.from(buf.subarray(0, n)));
}
fs.closeSync(fd);
const task = JSON.parse(Buffer.concat(chunks).toString('utf8'));
process.chdir(task.cwd);
process.argv.splice(1, process.argv.length - 1, task.entry, ...task.args);
delete require.cache[__filename];
// runMain sets it again for a CommonJS entry; an ES module entry has none.
delete process.mainModule;
process.nextTick(require('node:module').runMain, task.entry);
