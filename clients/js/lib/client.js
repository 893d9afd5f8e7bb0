// The online flow of the Rust `nautilus-client` (src/nautilus-client/src/client.rs):
// attest once (fresh nonce, user_data = SHA-256 of /manifest), then run
// tasks and return only answers that pass every check of verifyResult.

import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { verifyAttestation, toRoot } from './attestation.js';
import { checkShape, verifyResult, normalizeTaskPath, p256PublicKey, canonicalSignedResponse } from './result.js';
import { ClientError, AttestationError, ConfigError, ResultError, printable } from './errors.js';
import { fromHex } from './policy.js';

/** Largest `/get_attestation` body: a 64 KiB document as hex, plus framing. */
const MAX_ATTESTATION_RESPONSE = 256 * 1024;
/** Largest `/manifest` body. */
const MAX_MANIFEST_RESPONSE = 1024 * 1024;
/** Room for everything in a result besides stdout and stderr. */
const RESULT_OVERHEAD = 1024 * 1024;
/** JSON may escape each output byte as `\u00XX`. */
const JSON_ESCAPE_FACTOR = 6;
/** Bytes of random nonce per request. */
const NONCE_BYTES = 32;
/** Most of an error body read to find the server's message. */
const MAX_ERROR_BODY = 16 * 1024;
/** Time to connect, and for a GET to complete. */
const CONNECT_TIMEOUT_MS = 10 * 1000;
const GET_TIMEOUT_MS = 30 * 1000;
/** Time for the server to queue, start and clean up a task beyond its timeout. */
const TASK_MARGIN_MS = 120 * 1000;

function parseBase(url) {
  let base;
  try {
    base = new URL(url);
  } catch (e) {
    throw new ClientError('Url', { url, reason: e.message });
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new ClientError('Url', { url, reason: 'only http:// and https:// are supported' });
  }
  // Make relative joins append to the path instead of replacing its last segment.
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  base.search = '';
  base.hash = '';
  return base;
}

/** `Retry-After` as delay-seconds; an HTTP-date is ignored rather than trusted to our clock. */
function retryAfter(value) {
  return typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value.trim()) : null;
}

/**
 * TLS without a CA: the server's certificate is accepted only if the SHA-256
 * of its SubjectPublicKeyInfo is the attested manifest's `tls_spki_sha256`.
 * The attestation document and the manifest are signed and hashed, so they
 * may be fetched before that hash is known: until then every key presented
 * is recorded (the handshake still proves the server holds it), and once
 * the attestation is verified every recorded key must be the attested one.
 */
class SpkiPin {
  constructor() {
    this.pinned = null;
    this.seen = new Set();
  }

  /** Pins `attested` (hex); returns a key presented earlier that differs from it. */
  pin(attested) {
    this.pinned = attested;
    return [...this.seen].find((k) => k !== attested) ?? null;
  }

  /** Checks (or, before pinning, records) a presented key; throws TlsKeyMismatch. */
  check(presented) {
    if (this.pinned === null) {
      this.seen.add(presented);
    } else if (presented !== this.pinned) {
      throw new ClientError('TlsKeyMismatch', { attested: this.pinned, presented });
    }
  }
}

/** SHA-256 (hex) of the SubjectPublicKeyInfo of a DER certificate. */
function spkiSha256(der) {
  const spki = new crypto.X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('hex');
}

/**
 * A TLS connection to `url` whose certificate passed `pin`. Node's own
 * checks (CA chain, host name) are off: the pin replaces them, and it is
 * checked here, before the caller writes a byte.
 */
function connectPinned(url, pin) {
  return new Promise((resolve, reject) => {
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const socket = tls.connect({
      host,
      port: Number(url.port || 443),
      // An IP address is not a valid SNI name.
      ...(net.isIP(host) ? {} : { servername: host }),
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
    const timer = setTimeout(() => socket.destroy(new Error(`could not connect within ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(new ClientError('Http', { url: url.href }, e));
    });
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      try {
        const cert = socket.getPeerCertificate(true);
        if (!cert || !cert.raw) throw new ClientError('Http', { url: url.href }, new Error('the server presented no certificate'));
        pin.check(spkiSha256(cert.raw));
      } catch (e) {
        socket.destroy();
        return reject(e);
      }
      resolve(socket);
    });
  });
}

/**
 * One request. Resolves with the body of a 200 answer, read up to `limit`
 * bytes (ClientError TooLarge as soon as it passes); any other status is a
 * ClientError Status with the server's `error` sentence made printable.
 */
async function request(url, { pin = null, ...rest }) {
  const socket = url.protocol === 'https:' ? await connectPinned(url, pin) : null;
  return exchange(url, socket, rest);
}

function exchange(url, socket, { method = 'GET', body = null, limit, what, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const headers = body === null ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    let settled = false;
    const finish = (fn, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(overall);
      clearTimeout(connecting);
      fn(value);
    };
    const httpError = (cause) => new ClientError('Http', { url: url.href }, cause);
    const req = socket
      ? http.request(url.href.replace(/^https:/, 'http:'), { method, headers, createConnection: () => socket })
      : http.request(url, { method, headers, agent: false });
    const overall = setTimeout(() => req.destroy(new Error(`no complete answer within ${timeoutMs / 1000} s`)), timeoutMs);
    const connecting = setTimeout(() => req.destroy(new Error(`could not connect within ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
    if (socket) clearTimeout(connecting);
    else req.on('socket', (s) => s.once('connect', () => clearTimeout(connecting)));
    req.on('error', (e) => finish(reject, httpError(e)));
    req.on('response', (res) => {
      clearTimeout(connecting);
      const ok = res.statusCode === 200;
      const cap = ok ? limit : MAX_ERROR_BODY;
      const chunks = [];
      let size = 0;
      const done = () => {
        const bytes = Buffer.concat(chunks);
        if (ok) return finish(resolve, bytes);
        let message;
        try {
          const parsed = JSON.parse(bytes.toString('utf8'));
          if (typeof parsed.error !== 'string') throw new Error('no error field');
          message = parsed.error;
        } catch {
          message = bytes.toString('utf8');
        }
        finish(
          reject,
          new ClientError('Status', {
            url: url.href,
            status: res.statusCode,
            message: printable(message),
            retry_after_secs: res.statusCode === 503 ? retryAfter(res.headers['retry-after']) : null,
          }),
        );
        req.destroy();
      };
      const tooLarge = () => {
        finish(reject, new ClientError('TooLarge', { what, url: url.href, limit }));
        req.destroy();
      };
      if (ok && Number(res.headers['content-length']) > limit) return tooLarge();
      res.on('data', (chunk) => {
        if (settled) return;
        const room = cap - size;
        if (chunk.length > room) {
          // Only the start of an error body matters; a 200 body must fit.
          if (!ok) {
            chunks.push(chunk.subarray(0, room));
            return done();
          }
          return tooLarge();
        }
        chunks.push(chunk);
        size += chunk.length;
      });
      res.on('end', done);
      res.on('error', (e) => finish(reject, httpError(e)));
      res.on('aborted', () => finish(reject, httpError(new Error('connection closed before the answer was complete'))));
    });
    req.end(body === null ? undefined : body);
  });
}

function parseJson(bytes, what) {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ClientError('Malformed', { what, reason: printable(e.message) });
  }
}

/** The fields the Rust client reads from `/manifest`, type-checked as serde would. */
function checkManifest(body) {
  const problem = (reason) => new ClientError('Malformed', { what: 'manifest', reason });
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(body)) throw problem('not a JSON object');
  for (const field of ['server_version', 'attestation']) {
    if (typeof body[field] !== 'string') throw problem(`\`${field}\` is not a string`);
  }
  if (!isObject(body.limits)) throw problem('`limits` is not an object');
  for (const field of ['max_output_bytes', 'default_timeout_secs']) {
    if (!Number.isSafeInteger(body.limits[field]) || body.limits[field] < 0) throw problem(`\`limits.${field}\` is not a non-negative integer`);
  }
  if (!Array.isArray(body.tasks)) throw problem('`tasks` is not an array');
  body.tasks.forEach((t, i) => {
    if (!isObject(t) || typeof t.task_path !== 'string' || typeof t.task_digest !== 'string') {
      throw problem(`tasks[${i}] has no string task_path and task_digest`);
    }
  });
  return body;
}

/** A connection to one attested enclave. Make one with `Client.connect`. */
class Client {
  constructor(base, attestation, publicKey, manifestRaw, manifest, pin) {
    this.base = base;
    /** For https://: the attested TLS key every connection must present. */
    this.pin = pin;
    /** The verified attestation document (the fields `verify-doc` prints). */
    this.attestation = attestation;
    /** The attested key every result must be signed with, hex SEC1. */
    this.publicKey = publicKey;
    /** The exact `/manifest` bytes whose SHA-256 the enclave attested. */
    this.manifestRaw = manifestRaw;
    /** The attested manifest, parsed. */
    this.manifest = manifest;
    Object.freeze(this);
  }

  /**
   * Attests the server at `url`: fetches a document for a fresh random
   * nonce, verifies it under `root` and the policy options (as for
   * verifyAttestation; any `nonce` given is replaced by the fresh one),
   * checks that `user_data` is the SHA-256 of `/manifest`, and keeps the
   * attested key.
   *
   * With `https://`, every connection's TLS key must be the manifest's
   * `tls_spki_sha256` (ClientError TlsKeyMismatch otherwise); plain
   * `http://` to an `nsm` enclave is refused (InsecureHttp) unless
   * `insecureHttp` is set.
   *
   * @param {string} url e.g. https://127.0.0.1:3000
   * @param {object} [options] root, pcrs, allowDebug, maxAgeSecs, maxFutureSkewSecs, at, insecureHttp
   * @throws {ClientError}
   */
  static async connect(url, options = {}) {
    const base = parseBase(url);
    let root;
    try {
      root = toRoot(options.root);
    } catch (e) {
      if (e instanceof ConfigError) throw new ClientError('Config', {}, e);
      throw e;
    }
    const pin = base.protocol === 'https:' ? new SpkiPin() : null;
    const nonce = crypto.randomBytes(NONCE_BYTES);
    const attestationUrl = new URL(`get_attestation?nonce=${nonce.toString('hex')}`, base);
    const body = await request(attestationUrl, { pin, limit: MAX_ATTESTATION_RESPONSE, what: 'attestation response', timeoutMs: GET_TIMEOUT_MS });
    const response = parseJson(body, 'attestation response');
    if (response === null || typeof response !== 'object' || typeof response.attestation !== 'string') {
      throw new ClientError('Malformed', { what: 'attestation response', reason: 'no string field `attestation`' });
    }
    const documentBytes = fromHex(response.attestation);
    if (documentBytes === null) {
      throw new ClientError('Malformed', { what: 'attestation document hex', reason: 'not an even number of hex digits' });
    }
    let attestation;
    try {
      attestation = await verifyAttestation(documentBytes, { ...options, root, nonce });
    } catch (e) {
      if (e instanceof AttestationError) throw new ClientError('Attestation', {}, e);
      if (e instanceof ConfigError) throw new ClientError('Config', {}, e);
      throw e;
    }
    if (attestation.public_key === null) throw new ClientError('NoPublicKey');
    try {
      await p256PublicKey(attestation.public_key);
    } catch {
      throw new ClientError('BadPublicKey', { len: attestation.public_key.length / 2 });
    }

    const manifestRaw = await request(new URL('manifest', base), { pin, limit: MAX_MANIFEST_RESPONSE, what: 'manifest', timeoutMs: GET_TIMEOUT_MS });
    const got = crypto.createHash('sha256').update(manifestRaw).digest('hex');
    const attested = attestation.user_data ?? '';
    if (got !== attested) throw new ClientError('ManifestMismatch', { expected: attested, got });
    const manifest = checkManifest(parseJson(manifestRaw, 'manifest'));
    if (pin) {
      const attestedKey = manifest.tls_spki_sha256 ?? null;
      if (attestedKey === null) throw new ClientError('NoTlsKey');
      if (typeof attestedKey !== 'string' || !/^[0-9a-f]{64}$/.test(attestedKey)) {
        throw new ClientError('Malformed', { what: 'manifest tls_spki_sha256', reason: 'not 64 hex digits' });
      }
      const presented = pin.pin(attestedKey);
      if (presented !== null) throw new ClientError('TlsKeyMismatch', { attested: attestedKey, presented });
    } else if (manifest.attestation === 'nsm' && options.insecureHttp !== true) {
      throw new ClientError('InsecureHttp');
    }
    return new Client(base, attestation, attestation.public_key, manifestRaw, manifest, pin);
  }

  /** The manifest entry for `taskPath` (compared after normalization), or undefined. */
  task(taskPath) {
    const wanted = normalizeTaskPath(taskPath);
    return this.manifest.tasks.find((t) => t.task_path === wanted);
  }

  /**
   * Runs a task with a fresh nonce and resolves with the signed response
   * (`{ response: { intent, timestamp_ms, data }, signature }`; with
   * `signing: 'compact'`, the compact message and `stdout`, `stderr` beside
   * it) only if it is signed by the attested key and echoes exactly this request.
   *
   * @param {{ taskPath: string, args?: string[], stdin?: string, timeoutSecs?: number, signing?: 'full'|'compact' }} spec
   * @throws {ClientError}
   */
  async runTask(spec) {
    const { taskPath, args = [], stdin = null, timeoutSecs = null, signing = 'full' } = spec ?? {};
    if (signing !== 'full' && signing !== 'compact') throw new TypeError("`signing` must be 'full' or 'compact'");
    if (typeof taskPath !== 'string') throw new TypeError('`taskPath` must be a string');
    if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) throw new TypeError('`args` must be an array of strings');
    if (!(stdin === null || typeof stdin === 'string')) throw new TypeError('`stdin` must be a string');
    if (!(timeoutSecs === null || (Number.isSafeInteger(timeoutSecs) && timeoutSecs >= 0))) {
      throw new TypeError('`timeoutSecs` must be a non-negative integer');
    }
    const entry = this.task(taskPath);
    if (!entry) throw new ClientError('UnknownTask', { task_path: taskPath });
    const nonce = crypto.randomBytes(NONCE_BYTES).toString('hex');
    const { limits } = this.manifest;
    const limit = limits.max_output_bytes * 2 * JSON_ESCAPE_FACTOR + RESULT_OVERHEAD;
    // setTimeout fires at once for delays past 2^31-1 ms (24.8 days): cap there.
    const timeoutMs = Math.min((timeoutSecs ?? limits.default_timeout_secs) * 1000 + TASK_MARGIN_MS, 2 ** 31 - 1);
    const payload = { task_path: taskPath, ...(timeoutSecs === null ? {} : { timeout_secs: timeoutSecs }), args, ...(stdin === null ? {} : { stdin }), nonce, ...(signing === 'full' ? {} : { signing }) };

    const notBeforeMs = Date.now();
    const body = await request(new URL('process_data', this.base), {
      pin: this.pin,
      method: 'POST',
      body: JSON.stringify({ payload }),
      limit,
      what: 'task result',
      timeoutMs,
    });
    const notAfterMs = Date.now();
    const signed = parseJson(body, 'task result');
    try {
      checkShape(signed);
    } catch (e) {
      throw new ClientError('Malformed', { what: 'task result', reason: printable(e.message) });
    }
    // The form asked for, told by the fields: a relay cannot swap one for the other.
    if (Object.hasOwn(signed, 'stdout') !== (signing === 'compact')) {
      throw new ClientError('Malformed', { what: 'task result', reason: `not the ${signing} form asked for` });
    }
    try {
      await verifyResult(signed, {
        publicKey: this.publicKey,
        expect: {
          taskPath,
          args,
          stdin,
          nonce,
          taskDigest: entry.task_digest,
          egress: Array.isArray(entry.egress) ? entry.egress.filter((e) => typeof e === 'string') : [],
          notBeforeMs,
          notAfterMs,
        },
      });
    } catch (e) {
      if (e instanceof ResultError) throw new ClientError('Result', {}, e);
      throw e;
    }
    return canonicalSignedResponse(signed);
  }
}

export { Client, spkiSha256, MAX_ATTESTATION_RESPONSE, MAX_MANIFEST_RESPONSE };
