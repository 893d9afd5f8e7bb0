// nautilus-client: verify AWS Nitro Enclaves attestation documents and the
// signed answers of a Nautilus enclave, as strictly as the Rust client.
// This entry is the verification core: ES modules on Web Crypto and
// Uint8Array only, no Node built-ins, so the very same files run in browsers
// and in Node >= 18. The Node-only parts (the HTTP Client, the CLI) are in
// ./node.js, which Node resolves `nautilus-client` to.

import { verifyAttestation } from './attestation.js';
import { parseDocument, MAX_DOCUMENT_LEN, MAX_OPTIONAL_FIELD_LEN, MAX_NESTING_DEPTH, MAX_UNKNOWN_FIELDS, MAX_CABUNDLE_LEN } from './document.js';
import { TrustedRoot, AWS_NITRO_ROOT_G1_SHA256 } from './root.js';
import { readPcrFile, DEFAULT_MAX_AGE_SECS, DEFAULT_MAX_FUTURE_SKEW_SECS, MAX_PCR_FILE_LEN } from './policy.js';
import { verifyResult, verifySignedResponse, checkShape, signingBytes, compactOf, normalizeTaskPath, INTENT_TASK_RESULT, INTENT_TASK_RESULT_COMPACT, DEFAULT_CLOCK_SKEW_MS } from './result.js';
import { AttestationError, ConfigError, ResultError, ClientError } from './errors.js';

export {
  verifyAttestation,
  parseDocument,
  readPcrFile,
  TrustedRoot,
  verifyResult,
  verifySignedResponse,
  checkShape,
  signingBytes,
  compactOf,
  normalizeTaskPath,
  AttestationError,
  ConfigError,
  ResultError,
  ClientError,
  AWS_NITRO_ROOT_G1_SHA256,
  INTENT_TASK_RESULT,
  INTENT_TASK_RESULT_COMPACT,
  DEFAULT_MAX_AGE_SECS,
  DEFAULT_MAX_FUTURE_SKEW_SECS,
  DEFAULT_CLOCK_SKEW_MS,
  MAX_DOCUMENT_LEN,
  MAX_OPTIONAL_FIELD_LEN,
  MAX_NESTING_DEPTH,
  MAX_UNKNOWN_FIELDS,
  MAX_CABUNDLE_LEN,
  MAX_PCR_FILE_LEN,
};
