#!/usr/bin/env node
// `nautilus-verify`: the commands, flags, JSON output and exit codes of the
// Rust `nautilus-client` CLI (src/nautilus-client/src/main.rs).
//   verify-doc, attest: exit 0, or 1 with one line of reason on stderr.
//   run: 0 (task succeeded), 1 (it ran and failed; the verified result is
//   still printed), 2 (anything did not verify or could not be run).

import fs from 'node:fs';
import { verifyAttestation, readPcrFile, TrustedRoot, Client } from '../lib/node.js';
import { fromHex } from '../lib/bytes.js';

const { version } = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** Largest file `verify-doc`, `--root` or `--pcrs` reads. */
const MAX_INPUT_FILE = 1024 * 1024;
/** Largest stdin file `run` sends (the server's own limit is 1 MiB). */
const MAX_STDIN_FILE = 1024 * 1024;

const TRUST_FLAGS = {
  '--root': { value: 'PEM', help: 'Trust this root certificate (PEM or DER) instead of the AWS Nitro root' },
  '--pcrs': {
    value: 'FILE',
    help: "Expected PCRs from the image build: nitro-cli's JSON (`nitro-cli describe-eif --eif-path IMAGE.eif > FILE`) or eif_build's `<hex> PCRn` lines",
  },
  '--allow-debug': { help: 'Accept debug-mode documents (PCR0, PCR1 and PCR2 all zero)' },
};

const COMMANDS = {
  'verify-doc': {
    about: 'Verify an attestation document file; print its fields as JSON (exit 0) or the reason (exit 1)',
    positional: { name: 'FILE', help: 'The COSE_Sign1 document; `-` reads stdin' },
    flags: {
      '--hex': { help: 'The file holds hex text rather than raw bytes' },
      '--at-doc-time': { help: "Check at the document's own timestamp (for archived documents)", conflicts: '--at' },
      '--at': { value: 'UNIX_MS', number: true, help: 'Check at this time, in milliseconds since the UNIX epoch' },
      '--max-age-secs': { value: 'N', number: true, help: 'Reject documents older than this at the check time (default 300)' },
      '--nonce': { value: 'HEX', help: 'Expected nonce, hex' },
      ...TRUST_FLAGS,
    },
    failure: 1,
  },
  attest: {
    about: 'Attest a running server; print the verified document and manifest (exit 0) or the reason (exit 1)',
    flags: {
      '--url': { value: 'URL', required: true, help: "Server base URL, e.g. https://127.0.0.1:3000 (its TLS key is pinned through the attestation, no CA involved)" },
      '--insecure-http': { help: 'Accept plain http:// to an nsm enclave: the parent instance then reads every request and result' },
      ...TRUST_FLAGS,
    },
    failure: 1,
  },
  run: {
    about: 'Attest a server, run a task, verify and print the signed result (exit 0 success, 1 task failed, 2 not verified)',
    flags: {
      '--url': { value: 'URL', required: true, help: 'Server base URL, as for `attest`' },
      '--insecure-http': { help: 'As for `attest`' },
      '--task': { value: 'PATH', help: 'Task directory on the server (default nodejs-task)' },
      '--timeout': { value: 'SECS', number: true, help: 'Seconds before the server stops the task' },
      '--stdin-file': { value: 'F', help: "Send this file's contents (UTF-8) as the task's stdin" },
      '--compact': { help: "Ask for the compact signed form: the outputs' SHA-256 and lengths are signed (small enough for a chain), the texts beside" },
      ...TRUST_FLAGS,
    },
    rest: 'ARGS',
    failure: 2,
  },
};

class UsageError extends Error {}

function help() {
  const lines = [`nautilus-verify ${version}: verify Nautilus enclave attestations and signed task results`, '', 'Usage:'];
  for (const [name, c] of Object.entries(COMMANDS)) {
    const flags = Object.entries(c.flags).map(([f, d]) => (d.value ? `${f} ${d.value}` : f));
    const parts = [name, c.positional ? c.positional.name : '', ...flags.map((f) => `[${f}]`), c.rest ? `[-- ${c.rest}...]` : ''];
    lines.push(`  nautilus-verify ${parts.filter(Boolean).join(' ')}`, `      ${c.about}`);
  }
  lines.push('', 'Options:');
  const seen = new Set();
  for (const c of Object.values(COMMANDS)) {
    for (const [f, d] of Object.entries(c.flags)) {
      if (seen.has(f)) continue;
      seen.add(f);
      lines.push(`  ${(d.value ? `${f} <${d.value}>` : f).padEnd(22)} ${d.help}`);
    }
  }
  return lines.join('\n');
}

/** Parses argv like clap does for the Rust CLI: `{ command, opts, positional, rest }`. */
function parseArgs(argv) {
  const [command, ...args] = argv;
  const spec = COMMANDS[command];
  if (!spec) {
    throw new UsageError(command === undefined ? 'a subcommand is required: verify-doc, attest or run' : `unrecognized subcommand '${command}'`);
  }
  const opts = {};
  let positional;
  let rest = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') {
      if (!spec.rest) throw new UsageError(`unexpected argument '--' found`);
      rest = args.slice(i + 1);
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq === -1 ? arg : arg.slice(0, eq);
      const flag = spec.flags[name];
      if (!flag) throw new UsageError(`unexpected argument '${name}' found`);
      if (Object.hasOwn(opts, name)) throw new UsageError(`the argument '${name}' cannot be used multiple times`);
      if (!flag.value) {
        if (eq !== -1) throw new UsageError(`unexpected value '${arg.slice(eq + 1)}' for '${name}' found; no more were expected`);
        opts[name] = true;
        continue;
      }
      let value = eq === -1 ? args[++i] : arg.slice(eq + 1);
      if (value === undefined || (eq === -1 && value.startsWith('--'))) {
        throw new UsageError(`a value is required for '${name} <${flag.value}>' but none was supplied`);
      }
      if (flag.number) {
        if (!/^\+?\d+$/.test(value) || BigInt(value) > BigInt(Number.MAX_SAFE_INTEGER)) {
          throw new UsageError(`invalid value '${value}' for '${name} <${flag.value}>': not a whole number up to 2^53-1`);
        }
        value = Number(value);
      }
      opts[name] = value;
    } else if (spec.positional && positional === undefined) {
      positional = arg;
    } else {
      throw new UsageError(`unexpected argument '${arg}' found`);
    }
  }
  for (const [name, flag] of Object.entries(spec.flags)) {
    if (flag.required && !Object.hasOwn(opts, name)) {
      throw new UsageError(`the following required arguments were not provided: ${name} <${flag.value}>`);
    }
    if (flag.conflicts && Object.hasOwn(opts, name) && Object.hasOwn(opts, flag.conflicts)) {
      throw new UsageError(`the argument '${name}' cannot be used with '${flag.conflicts} <${spec.flags[flag.conflicts].value}>'`);
    }
  }
  if (spec.positional && positional === undefined) {
    throw new UsageError(`the following required arguments were not provided: <${spec.positional.name}>`);
  }
  return { command, spec, opts, positional, rest };
}

/** Reads a file (or stdin for `-`), refusing more than `limit` bytes. */
function readLimited(path, limit) {
  let fd;
  try {
    fd = path === '-' ? 0 : fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot open ${path}: ${e.message}`);
  }
  const chunks = [];
  let total = 0;
  try {
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      let n;
      try {
        n = fs.readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        if (e.code === 'EAGAIN') continue;
        if (e.code === 'EOF') break;
        throw new Error(`cannot read ${path}: ${e.message}`);
      }
      if (n === 0) break;
      total += n;
      if (total > limit) throw new Error(`${path} is larger than ${limit} bytes`);
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
  } finally {
    if (fd !== 0) fs.closeSync(fd);
  }
  return Buffer.concat(chunks);
}

const utf8 = (bytes, what) => {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new Error(`${what} is not UTF-8`);
  }
};

/** Prefixes a library error's message with the flag and file it came from. */
function withContext(context, fn) {
  try {
    return fn();
  } catch (e) {
    throw new Error(`${context}: ${e.message}`);
  }
}

function trust(opts) {
  const root = opts['--root'] === undefined ? TrustedRoot.awsNitro() : withContext(`--root ${opts['--root']}`, () => TrustedRoot.fromPemOrDer(readLimited(opts['--root'], MAX_INPUT_FILE)));
  let pcrs;
  if (opts['--pcrs'] !== undefined) {
    const path = opts['--pcrs'];
    const file = withContext(`--pcrs ${path}`, () => readPcrFile(readLimited(path, MAX_INPUT_FILE)));
    pcrs = file.pcrs;
    // Stderr, so stdout stays one JSON answer; said before anything is
    // fetched, so a wrong file is noticed even when verification fails.
    const names = [...pcrs.keys()].map((i) => `PCR${i}`).join(', ');
    process.stderr.write(`note: --pcrs ${path} read as ${file.description}: expecting ${names}\n`);
  }
  return { root, pcrs, allowDebug: opts['--allow-debug'] === true };
}

/** serde_json::Value prints object keys sorted (a BTreeMap); the `attest` output is one. */
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(
    Object.keys(v)
      .sort()
      .map((k) => [k, sortKeys(v[k])]),
  );
}

async function execute({ command, opts, positional, rest }) {
  if (command === 'verify-doc') {
    const raw = readLimited(positional, MAX_INPUT_FILE);
    let bytes = raw;
    if (opts['--hex']) {
      const text = utf8(raw, '--hex file').trim();
      bytes = fromHex(text);
      if (bytes === null) throw new Error('--hex file is not valid hex');
    } else if (looksLikeHex(raw)) {
      throw new Error(`${positional} holds hex text, not a document's bytes: pass --hex to read it as hex`);
    } else if (raw.toString('latin1').trimStart().startsWith('{')) {
      throw new Error(
        `${positional} holds JSON, not a document: save the \`attestation\` field of /get_attestation's answer (hex) and pass --hex`,
      );
    }
    const options = trust(opts);
    if (opts['--at-doc-time']) options.at = 'document';
    else if (opts['--at'] !== undefined) options.at = opts['--at'];
    if (opts['--max-age-secs'] !== undefined) options.maxAgeSecs = opts['--max-age-secs'];
    if (opts['--nonce'] !== undefined) {
      options.nonce = fromHex(opts['--nonce']);
      if (options.nonce === null) throw new Error('--nonce is not valid hex');
    }
    return { output: await verifyAttestation(bytes, options), code: 0 };
  }
  const options = { ...trust(opts), insecureHttp: opts['--insecure-http'] === true };
  const client = await Client.connect(opts['--url'], options);
  if (command === 'attest') {
    const manifest = JSON.parse(client.manifestRaw.toString('utf8'));
    return { output: sortKeys({ attestation: client.attestation, manifest }), code: 0 };
  }
  const spec = { taskPath: opts['--task'] ?? 'nodejs-task', args: rest };
  if (opts['--timeout'] !== undefined) spec.timeoutSecs = opts['--timeout'];
  if (opts['--compact']) spec.signing = 'compact';
  if (opts['--stdin-file'] !== undefined) spec.stdin = utf8(readLimited(opts['--stdin-file'], MAX_STDIN_FILE), '--stdin-file');
  const signed = await client.runTask(spec);
  return { output: signed, code: signed.response.data.status === 'success' ? 0 : 1 };
}

/**
 * Whether `raw` is hex text (what /get_attestation answers, in its
 * `attestation` field) rather than a document's bytes: a COSE_Sign1 document
 * starts with a CBOR array or tag byte, never an ASCII digit.
 */
function looksLikeHex(raw) {
  const text = raw.toString('latin1').trim();
  return text.length > 0 && /^[0-9a-fA-F]+$/.test(text);
}

/** The flag a rejection most often means someone is missing (as the Rust CLI says it). */
function fixHint(error, opts) {
  let e = error;
  while (e && e.code !== 'RootMismatch' && e.code !== 'DebugMode') e = e.cause;
  if (e && e.code === 'RootMismatch') {
    return opts['--root'] === undefined
      ? " (a dev server, such as `make run`'s, signs under its own root: pass `--root out/dev-root.pem`, the file its --dev-root-out wrote)"
      : ' (for a dev server, pass the root that server wrote with --dev-root-out (`make run` writes out/dev-root.pem, new at each start); for a real enclave, drop --root)';
  }
  if (e && e.code === 'DebugMode') {
    return ' (dev servers and debug-mode enclaves only make such documents: pass `--allow-debug` to accept them, never for a production enclave)';
  }
  return '';
}

/** One line on stderr, then exit: every failure ends here. */
function fail(message, code) {
  process.stderr.write(`error: ${message.replace(/[\r\n]+/g, ' ')}\n`, () => process.exit(code));
}

async function main(argv) {
  // No arguments at all: the usage, on stderr, as a failure.
  if (argv.length === 0) return process.stderr.write(`${help()}\n`, () => process.exit(1));
  const beforeRest = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  if (beforeRest.some((a) => a === '--help' || a === '-h')) return process.stdout.write(`${help()}\n`);
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) return process.stdout.write(`nautilus-verify ${version}\n`);
  let parsed;
  try {
    parsed = parseArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) return fail(`${e.message} (see --help)`, argv[0] === 'run' ? 2 : 1);
    throw e;
  }
  // A reader that went away (`| head`) is not an error worth a crash: the
  // result was produced, nobody wants the rest.
  process.stdout.on('error', (e) => {
    if (e.code !== 'EPIPE') fail(`cannot write the output: ${e.message}`, parsed.spec.failure);
  });
  let result;
  try {
    result = await execute(parsed);
  } catch (e) {
    return fail(`${e.message}${fixHint(e, parsed.opts)}`, parsed.spec.failure);
  }
  process.exitCode = result.code;
  process.stdout.write(`${JSON.stringify(result.output)}\n`);
}

main(process.argv.slice(2));
