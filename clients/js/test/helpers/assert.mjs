// The one assertion the error tests need: `fn` throws an instance of
// `ErrorClass` with this `code` and, if given, exactly these `details`.

import assert from 'node:assert';

function check(error, ErrorClass, code, details) {
  assert.ok(error instanceof ErrorClass, `expected ${ErrorClass.name} ${code}, got ${error && error.stack}`);
  assert.strictEqual(error.code, code, error.message);
  if (details !== undefined) assert.deepStrictEqual(error.details, details, error.message);
  return error;
}

/** Resolves to the error, for further checks of its message; `fn` may be async. */
export async function throwsCode(fn, ErrorClass, code, details) {
  try {
    await fn();
  } catch (e) {
    return check(e, ErrorClass, code, details);
  }
  assert.fail(`expected ${ErrorClass.name} ${code}, nothing was thrown`);
}

/** The same for a promise. */
export async function rejectsCode(promise, ErrorClass, code, details) {
  try {
    await promise;
  } catch (e) {
    return check(e, ErrorClass, code, details);
  }
  assert.fail(`expected ${ErrorClass.name} ${code}, the promise resolved`);
}
