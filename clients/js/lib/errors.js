// Error classes. Each carries `code` (the name of the Rust enum variant it
// mirrors, e.g. 'CoseSignature') and `details` (that variant's fields), and a
// message worded exactly as the Rust `Display` of the same error, with the
// cause appended after ': ' as `{:#}` prints it, so the two CLIs say the same.

/** Where a certificate sits in a document's chain: an index into cabundle, or 'leaf'. */
function certName(position) {
  return position === 'leaf' ? 'leaf certificate' : `cabundle[${position}]`;
}

const ATTESTATION_MESSAGES = {
  InputTooLarge: (d) => `document is ${d.len} bytes, more than the ${d.max}-byte limit`,
  Truncated: (d) => `document is truncated: input ended inside the ${d.context}`,
  MalformedCbor: (d) => `malformed CBOR in the ${d.context}: ${d.reason}`,
  TrailingBytes: (d) => `${d.count} trailing byte(s) after the ${d.context}`,
  NestingTooDeep: (d) => `CBOR nesting deeper than ${d.max} levels in the ${d.context}`,
  UnexpectedTag: (d) => `unexpected CBOR tag ${d.tag} on the COSE_Sign1 structure (only tag 18 is allowed)`,
  MissingAlgorithm: () => 'protected header has no algorithm (label 1)',
  UnsupportedAlgorithm: (d) => `unsupported COSE algorithm ${d.found}: only ES384 (-35) is accepted`,
  CriticalHeader: () => 'protected header marks labels as critical; none are understood',
  SignatureLength: (d) => `COSE signature is ${d.len} bytes; ES384 signatures are 96 bytes (r || s)`,
  MissingField: (d) => `payload field \`${d.field}\` is missing`,
  DuplicateField: (d) => `payload field \`${d.field}\` appears more than once`,
  InvalidField: (d) => `payload field \`${d.field}\` is invalid: ${d.reason}`,
  TooManyUnknownFields: (d) => `payload has more than ${d.max} unknown fields`,
  InvalidPcr: (d) => `PCR entry is invalid: ${d.reason}`,
  RootMismatch: (d) => `cabundle[0] is not the trusted root (SHA-256 ${d.got}, expected ${d.expected})`,
  CertificateParse: (d) => `${certName(d.cert)}: cannot parse certificate: ${d.reason}`,
  UnsupportedCertSignatureAlgorithm: (d) =>
    `${certName(d.cert)}: unsupported signature algorithm ${d.oid} (only ecdsa-with-SHA256/SHA384)`,
  UnsupportedPublicKey: (d) => `${certName(d.cert)}: unsupported public key: ${d.reason}`,
  CertificateSignature: (d) => `${certName(d.cert)}: signature does not verify under the issuer's key`,
  IssuerMismatch: (d) =>
    `${certName(d.cert)}: issuer name does not match the subject of the certificate before it`,
  CertificateNotValidAt: (d) =>
    `${certName(d.cert)}: not valid at ${d.at_ms} ms (valid from ${d.not_before_ms} ms to ${d.not_after_ms} ms, UNIX time)`,
  NotACa: (d) => `${certName(d.cert)}: basicConstraints says it is not a CA, but it issues the next certificate`,
  LeafIsCa: () => 'leaf certificate is a CA (basicConstraints cA = true)',
  BadExtension: (d) => `${certName(d.cert)}: malformed extension: ${d.reason}`,
  CoseSignature: () => "COSE signature does not verify with the leaf certificate's key",
  DocumentTooOld: (d) =>
    `document is too old: timestamp ${d.timestamp_ms} ms is ${d.age_ms} ms before check time ${d.at_ms} ms (max age ${d.max_age_ms} ms)`,
  DocumentFromFuture: (d) =>
    `document is from the future: timestamp ${d.timestamp_ms} ms is after check time ${d.at_ms} ms by more than the allowed ${d.max_skew_ms} ms`,
  DebugMode: () => 'debug-mode document (PCR0, PCR1, PCR2 all zero) and debug documents are not allowed',
  PcrMismatch: (d) => `PCR${d.index} mismatch: expected ${d.expected}, got ${d.got}`,
  PcrMissing: (d) => `PCR${d.index} is expected but absent from the document`,
  NonceMismatch: (d) => `nonce mismatch: expected ${d.expected}, got ${d.got === null ? 'none' : d.got}`,
};

const CONFIG_MESSAGES = {
  InvalidRoot: (d) => `root certificate is not valid PEM/DER: ${d.reason}`,
  RootPinMismatch: (d) => `embedded AWS root has SHA-256 ${d.got}, not the pinned ${d.expected}`,
  PcrIndexOutOfRange: (d) => `PCR index ${d.index} is out of range (0-31)`,
  PcrLength: (d) => `PCR${d.index} value is ${d.len} bytes; PCRs are 32, 48 or 64 bytes`,
  PcrFile: (d) =>
    `PCR file not accepted: ${d.reason}. Accepted: nitro-cli's measurements JSON (\`nitro-cli describe-eif --eif-path IMAGE.eif > FILE\`, ` +
    "or what `nitro-cli build-enclave` prints on stdout) or eif_build's --pcrs_output text (one `<hex> PCRn` line per PCR)",
};

const RESULT_MESSAGES = {
  Signature: () => 'result signature is invalid',
  Mismatch: (d) => `signed ${d.field} is ${rustDebug(d.got)}, but ${rustDebug(d.expected)} was asked for`,
  Stale: (d) => `signed timestamp ${d.timestamp_ms} ms is outside the request window ${d.from_ms}..=${d.to_ms} ms`,
  Inconsistent: (d) =>
    `signed status ${rustDebug(d.status)} contradicts exit code ${d.exit_code === null ? 'None' : `Some(${d.exit_code})`}`,
};

const CLIENT_MESSAGES = {
  Url: (d) => `invalid server URL ${rustDebug(d.url)}: ${d.reason}`,
  Http: (d) => `request to ${d.url} failed`,
  Status: (d) =>
    `${d.url} answered HTTP ${d.status}: ${d.message}${d.retry_after_secs == null ? '' : `, retry after ${d.retry_after_secs} s`}`,
  TooLarge: (d) => `${d.what} from ${d.url} exceeds ${d.limit} bytes`,
  Malformed: (d) => `malformed ${d.what}: ${d.reason}`,
  Attestation: () => 'attestation document rejected',
  Config: () => 'bad verification input',
  NoPublicKey: () => 'attestation document carries no public key',
  BadPublicKey: (d) => `attested public key is not a P-256 SEC1 point (${d.len} bytes)`,
  ManifestMismatch: (d) =>
    `manifest does not match the attestation: its SHA-256 is ${d.got}, the document's user_data is ${d.expected}`,
  UnknownTask: (d) => `task ${rustDebug(d.task_path)} is not in the attested manifest`,
  Result: () => 'result rejected',
  TlsKeyMismatch: (d) =>
    `TLS key mismatch: the server presented a certificate whose SPKI SHA-256 is ${d.presented}, but the attested manifest pins ${d.attested}; something between this client and the enclave (a relay, or the parent instance) terminates TLS`,
  NoTlsKey: () =>
    'the attested manifest pins no TLS key (tls_spki_sha256 is null: the server runs with --tls off), so this https:// connection cannot be tied to the enclave; use http://',
  InsecureHttp: () =>
    'refusing plain http:// to an nsm enclave: the parent instance would read every request and result; use https:// (the server\'s TLS key is pinned through the attestation), or pass --insecure-http to accept that',
};

function makeClass(name, messages) {
  return class extends Error {
    /**
     * @param {string} code the Rust variant name
     * @param {object} [details] the variant's fields
     * @param {Error} [cause] the underlying error, appended to the message
     */
    constructor(code, details = {}, cause = undefined) {
      const format = messages[code];
      if (!format) throw new TypeError(`unknown ${name} code ${code}`);
      const own = format(details);
      super(cause ? `${own}: ${cause.message}` : own, cause ? { cause } : undefined);
      this.name = name;
      this.code = code;
      this.details = details;
    }
  };
}

/** Anything wrong with a document: structure, chain, signature or policy. */
const AttestationError = makeClass('AttestationError', ATTESTATION_MESSAGES);
/** Anything wrong with what the caller supplied: a root certificate, a PCR set or file. */
const ConfigError = makeClass('ConfigError', CONFIG_MESSAGES);
/** A signed result that is not a faithful answer to the request it claims to answer. */
const ResultError = makeClass('ResultError', RESULT_MESSAGES);
/** Why a server could not be attested or a result could not be trusted. */
const ClientError = makeClass('ClientError', CLIENT_MESSAGES);

/** Rust's `{:?}` of a string: quoted, with `"`, `\` and control characters escaped. */
function rustDebug(s) {
  return `"${escapeChars(String(s), false)}"`;
}

/** Rust's `{:?}` of a `Vec<String>`. */
function rustDebugList(list) {
  return `[${list.map(rustDebug).join(', ')}]`;
}

const NAMED_ESCAPES = { '\t': '\\t', '\r': '\\r', '\n': '\\n', '\\': '\\\\', '\0': '\\0' };

function escapeChars(s, keepQuotes) {
  let out = '';
  for (const c of s) out += escapeChar(c, keepQuotes);
  return out;
}

function escapeChar(c, keepQuotes) {
  if (NAMED_ESCAPES[c]) return NAMED_ESCAPES[c];
  if (c === '"' || c === "'") return keepQuotes || c === "'" ? c : '\\"';
  // Control, format, unassigned, private-use and lone surrogates: what Rust's
  // `escape_debug` writes as `\u{…}` (it also escapes a few more rare ones).
  if (/\p{C}/u.test(c)) return `\\u{${c.codePointAt(0).toString(16)}}`;
  return c;
}

/** Longest server-supplied text kept in an error message, in characters. */
const MAX_SERVER_TEXT = 300;

/**
 * Makes server-controlled text safe to print as part of a one-line message:
 * control and other non-printable characters are escaped Rust-style (`\n`,
 * `\u{1b}`), quotes are kept, and the text is cut at MAX_SERVER_TEXT
 * characters, marked with `…`. Same as the Rust client's `printable`.
 */
function printable(raw) {
  let out = '';
  let len = 0;
  for (const c of String(raw)) {
    const escaped = escapeChar(c, true);
    const n = [...escaped].length;
    if (len + n > MAX_SERVER_TEXT) {
      out += '…';
      break;
    }
    len += n;
    out += escaped;
  }
  return out;
}

export {
  AttestationError,
  ConfigError,
  ResultError,
  ClientError,
  certName,
  rustDebug,
  rustDebugList,
  printable,
  MAX_SERVER_TEXT,
};
