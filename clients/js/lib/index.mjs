// ES module entry: the same objects as the CommonJS entry (one implementation,
// no dual-package hazard: an error thrown under require is instanceof the
// class seen under import).
import cjs from './index.js';

export const {
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
} = cjs;
export default cjs;
