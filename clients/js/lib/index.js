'use strict';
// nautilus-client: verify AWS Nitro Enclaves attestation documents and the
// signed answers of a Nautilus enclave, as strictly as the Rust client.
// This CommonJS module is the one implementation; lib/index.mjs re-exports
// it for `import`, so both module systems share the same classes.

const { verifyAttestation } = require('./attestation.js');
const { parseDocument, MAX_DOCUMENT_LEN, MAX_OPTIONAL_FIELD_LEN, MAX_NESTING_DEPTH, MAX_UNKNOWN_FIELDS, MAX_CABUNDLE_LEN } = require('./document.js');
const { TrustedRoot, AWS_NITRO_ROOT_G1_SHA256 } = require('./root.js');
const { readPcrFile, DEFAULT_MAX_AGE_SECS, DEFAULT_MAX_FUTURE_SKEW_SECS, MAX_PCR_FILE_LEN } = require('./policy.js');
const { verifyResult, verifySignedResponse, checkShape, signingBytes, normalizeTaskPath, INTENT_TASK_RESULT, DEFAULT_CLOCK_SKEW_MS } = require('./result.js');
const { Client } = require('./client.js');
const { AttestationError, ConfigError, ResultError, ClientError } = require('./errors.js');

module.exports = {
  verifyAttestation,
  parseDocument,
  readPcrFile,
  TrustedRoot,
  verifyResult,
  verifySignedResponse,
  checkShape,
  signingBytes,
  normalizeTaskPath,
  Client,
  AttestationError,
  ConfigError,
  ResultError,
  ClientError,
  AWS_NITRO_ROOT_G1_SHA256,
  INTENT_TASK_RESULT,
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
