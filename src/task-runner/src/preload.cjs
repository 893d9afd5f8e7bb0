'use strict';
// Loaded by the task runner (`node -r`) before the task's own code.
// Output pipes are non-blocking in Node.js, so `process.exit()` right after a
// large write drops whatever did not fit in the pipe (nodejs/node#6456).
// Blocking writes make a task's output arrive whole.
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === 'function') {
    stream._handle.setBlocking(true);
  }
}
