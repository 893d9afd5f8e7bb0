// Type declarations of nautilus-client: the core (browsers, `nautilus-client/core`)
// and, under Node, `Client` too. Verification is asynchronous (Web Crypto).

/** The verified fields of an attestation document, as `nautilus-client verify-doc` prints them. */
export interface AttestationSummary {
  module_id: string;
  /** When the NSM made the document, ms since the UNIX epoch. */
  timestamp_ms: number;
  /** Always "SHA384". */
  digest: string;
  /** Every PCR the document carries: index ("0".."31") to lowercase hex. */
  pcrs: Record<string, string>;
  /** Lowercase hex; null when absent or CBOR null, "" when an empty byte string. */
  public_key: string | null;
  user_data: string | null;
  nonce: string | null;
  /** PCR0, PCR1 and PCR2 all zero. */
  debug: boolean;
}

/** Expected PCRs: index to value (bytes or hex), e.g. from `readPcrFile`. */
export type PcrSet = Map<number, Uint8Array | string> | Record<string, Uint8Array | string>;

export interface VerifyOptions {
  /** Trust anchor; PEM text or DER bytes are accepted too. Default: the embedded AWS Nitro root G1. */
  root?: TrustedRoot | string | Uint8Array;
  /** When certificates and age are judged: 'now' (default), 'document' (its own timestamp) or ms since the epoch. */
  at?: 'now' | 'document' | number;
  /** Largest accepted age at the check time, in seconds (default 300); null disables the check. */
  maxAgeSecs?: number | null;
  /** How far after the check time a timestamp may be, in seconds (default 60). */
  maxFutureSkewSecs?: number;
  /** PCRs that must be present with exactly these values. */
  pcrs?: PcrSet;
  /** The nonce the document must carry (bytes or hex). */
  nonce?: Uint8Array | string;
  /** Accept debug-mode documents. Default false. */
  allowDebug?: boolean;
}

/**
 * Verifies an AWS Nitro Enclaves attestation document: structure (bounded
 * CBOR), certificate chain to the root at the check time, ES384 COSE
 * signature, then freshness, debug mode, PCRs and nonce.
 * @throws {AttestationError} the document is not valid, with the precise reason
 * @throws {ConfigError} the root or PCR set supplied is unusable
 */
export function verifyAttestation(doc: Uint8Array, options?: VerifyOptions): Promise<AttestationSummary>;

/** A parsed but unverified document. Nothing in it should be trusted. */
export interface ParsedDocument {
  protected: Uint8Array;
  payload: Uint8Array;
  signature: Uint8Array;
  fields: {
    module_id: string;
    digest: string;
    timestamp_ms: number;
    pcrs: Map<number, Uint8Array>;
    certificate: Uint8Array;
    cabundle: Uint8Array[];
    public_key: Uint8Array | null;
    user_data: Uint8Array | null;
    nonce: Uint8Array | null;
  };
}

/** Structure-only parse of a COSE_Sign1 document. @throws {AttestationError} */
export function parseDocument(doc: Uint8Array): ParsedDocument;

/**
 * Reads a PCR file as the Rust client does: nitro-cli's JSON
 * (`{"Measurements": {"PCR0": hex, …}, …}`, as `nitro-cli describe-eif` prints it),
 * the measurements object alone, or eif_build's `<hex> PCRn` lines; PCR0-PCR8,
 * 96 hex digits each; at most 64 KiB of UTF-8.
 * @throws {ConfigError} code 'PcrFile', naming the accepted formats
 */
export function readPcrFile(file: string | Uint8Array): {
  pcrs: Map<number, Uint8Array>;
  format: 'NitroCliJson' | 'MeasurementsJson' | 'EifBuildText';
  /** The format as messages name it, e.g. "eif_build text (<hex> PCRn lines)". */
  description: string;
};

/** The certificate a document's cabundle[0] must be byte-identical to. */
export class TrustedRoot {
  private constructor(der: Uint8Array);
  readonly der: Uint8Array;
  /** The embedded AWS Nitro Enclaves root G1; its pinned SHA-256 is checked before each verification. */
  static awsNitro(): TrustedRoot;
  /** Rejects with ConfigError 'RootPinMismatch' if the DER does not have its pinned SHA-256. */
  checkPin(): Promise<void>;
  static fromDer(der: Uint8Array): TrustedRoot;
  static fromPem(pem: string): TrustedRoot;
  /** PEM if the bytes are text with a PEM header, DER otherwise. */
  static fromPemOrDer(bytes: Uint8Array | string): TrustedRoot;
  sha256Hex(): Promise<string>;
}

/** A signed task result as the server sends it. */
export interface TaskResult {
  task_id: string;
  task_path: string;
  task_digest: string;
  args: string[];
  stdin_sha256: string | null;
  nonce: string | null;
  status: string;
  exit_code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  execution_time_ms: number;
  /** The runner's limit the run hit (signed, never from the task's output). */
  limit: 'memory' | 'time' | 'pids' | 'output' | null;
  /** What the run used, as the runner measured it (null without root). */
  resources: { cpu_time_ms: number; peak_memory_bytes: number } | null;
  /** One entry per declared destination the task connected to (docs/egress.md). */
  egress: EgressEntry[];
}

/** What one destination carried during a run. */
export interface EgressEntry {
  host: string;
  port: number;
  connections: number;
  bytes_out: number;
  bytes_in: number;
}

export interface SignedResponse {
  response: { intent: number; timestamp_ms: number; data: TaskResult };
  /** 128 lowercase hex digits: r || s, low-S. */
  signature: string;
}

/** TaskResult with each text replaced by its SHA-256 (hex of the UTF-8) and byte length. */
export type CompactTaskResult = Omit<TaskResult, 'stdout' | 'stderr'> & {
  stdout_sha256: string;
  stdout_len: number;
  stderr_sha256: string;
  stderr_len: number;
};

/** `"signing": "compact"`: the compact message (intent 1) is signed, the texts come beside it. */
export interface CompactSignedResponse {
  response: { intent: number; timestamp_ms: number; data: CompactTaskResult };
  signature: string;
  stdout: string;
  stderr: string;
}

/** The whole result a verification resolves to (texts included, whatever the form). */
export interface VerifiedMessage {
  intent: number;
  timestamp_ms: number;
  data: TaskResult;
}

/** What was asked; the signed data must echo each of it. */
export interface ExpectedResult {
  taskPath: string;
  args?: string[];
  /** Stdin sent, if any: the result must carry its SHA-256. */
  stdin?: string | Uint8Array | null;
  /** The hex nonce sent with the request. */
  nonce: string;
  /** The task's digest from the attested manifest, if known. */
  taskDigest?: string | null;
  /** The task's destinations (`host:port`) from the attested manifest: every signed `egress` entry must be one. */
  egress?: string[] | null;
  /** The signed timestamp must be within [notBeforeMs - clockSkewMs, notAfterMs + clockSkewMs]. */
  notBeforeMs: number;
  notAfterMs: number;
  /** Default 60000. */
  clockSkewMs?: number;
}

/**
 * Verifies a signed /process_data answer: shape, signature (low-S, intent 0)
 * under the attested key, nonce, task path, args, stdin hash, task digest,
 * status/exit code consistency and timestamp window.
 * @throws {ResultError}
 */
export function verifyResult(response: unknown, options: { publicKey: string | Uint8Array; expect: ExpectedResult }): Promise<VerifiedMessage>;

/** Shape and signature (and, compact form, the texts' digests) only. Rejects with TypeError (bad shape or key) or Error (bad signature). */
export function verifySignedResponse(signed: unknown, publicKey: string | Uint8Array): Promise<VerifiedMessage>;
/** @throws {TypeError} naming the first field the Rust types would not parse to the same value */
export function checkShape(signed: unknown): void;
/** The BCS bytes a signature covers (full or compact message). */
export function signingBytes(response: unknown): Uint8Array;
/** The compact form of a full TaskResult (the one mapping, as the server's). */
export function compactOf(data: TaskResult): Promise<CompactTaskResult>;
export function normalizeTaskPath(path: string): string;

export interface ConnectOptions extends Omit<VerifyOptions, 'nonce'> {
  /** Accept plain http:// to an nsm enclave (the parent instance reads everything). */
  insecureHttp?: boolean;
}

export interface TaskSpec {
  taskPath: string;
  args?: string[];
  stdin?: string;
  timeoutSecs?: number;
  /** 'full' (default) or 'compact'. */
  signing?: 'full' | 'compact';
}

export interface Manifest {
  server_version: string;
  attestation: string;
  limits: { max_output_bytes: number; default_timeout_secs: number; [key: string]: unknown };
  /** Hex SHA-256 of the TLS key's SPKI; null when the server runs without TLS. */
  tls_spki_sha256?: string | null;
  tasks: { task_path: string; task_digest: string; [key: string]: unknown }[];
  [key: string]: unknown;
}

/** A connection to one attested enclave. */
export class Client {
  private constructor();
  /** Attests the server (fresh nonce, user_data = SHA-256 of /manifest). @throws {ClientError} */
  static connect(url: string, options?: ConnectOptions): Promise<Client>;
  readonly attestation: AttestationSummary;
  /** The attested key, hex SEC1. */
  readonly publicKey: string;
  /** The exact /manifest bytes the enclave attested. */
  readonly manifestRaw: Uint8Array;
  readonly manifest: Manifest;
  task(taskPath: string): { task_path: string; task_digest: string } | undefined;
  /** Runs a task with a fresh nonce; resolves only with a verified answer. @throws {ClientError} */
  runTask(spec: TaskSpec): Promise<SignedResponse>;
}

declare class NautilusError<Code extends string> extends Error {
  /** The name of the Rust error variant this mirrors, e.g. 'CoseSignature'. */
  readonly code: Code;
  /** That variant's fields. */
  readonly details: Record<string, unknown>;
}

export class AttestationError extends NautilusError<
  | 'InputTooLarge' | 'Truncated' | 'MalformedCbor' | 'TrailingBytes' | 'NestingTooDeep' | 'UnexpectedTag'
  | 'MissingAlgorithm' | 'UnsupportedAlgorithm' | 'CriticalHeader' | 'SignatureLength'
  | 'MissingField' | 'DuplicateField' | 'InvalidField' | 'TooManyUnknownFields' | 'InvalidPcr'
  | 'RootMismatch' | 'CertificateParse' | 'UnsupportedCertSignatureAlgorithm' | 'UnsupportedPublicKey'
  | 'CertificateSignature' | 'IssuerMismatch' | 'CertificateNotValidAt' | 'NotACa' | 'LeafIsCa' | 'BadExtension'
  | 'CoseSignature' | 'DocumentTooOld' | 'DocumentFromFuture' | 'DebugMode' | 'PcrMismatch' | 'PcrMissing' | 'NonceMismatch'
> {}
export class ConfigError extends NautilusError<'InvalidRoot' | 'RootPinMismatch' | 'PcrIndexOutOfRange' | 'PcrLength' | 'PcrFile'> {}
export class ResultError extends NautilusError<'Signature' | 'Mismatch' | 'Stale' | 'Inconsistent'> {}
export class ClientError extends NautilusError<
  | 'Url' | 'Http' | 'Status' | 'TooLarge' | 'Malformed' | 'Attestation' | 'Config'
  | 'NoPublicKey' | 'BadPublicKey' | 'ManifestMismatch' | 'UnknownTask' | 'Result'
  | 'TlsKeyMismatch' | 'NoTlsKey' | 'InsecureHttp'
> {}

/** SHA-256 of the embedded AWS Nitro Enclaves root G1's DER. */
export const AWS_NITRO_ROOT_G1_SHA256: string;
export const INTENT_TASK_RESULT: number;
export const INTENT_TASK_RESULT_COMPACT: number;
export const DEFAULT_MAX_AGE_SECS: number;
export const DEFAULT_MAX_FUTURE_SKEW_SECS: number;
export const DEFAULT_CLOCK_SKEW_MS: number;
export const MAX_DOCUMENT_LEN: number;
export const MAX_OPTIONAL_FIELD_LEN: number;
export const MAX_NESTING_DEPTH: number;
export const MAX_UNKNOWN_FIELDS: number;
export const MAX_CABUNDLE_LEN: number;
export const MAX_PCR_FILE_LEN: number;
