// Just enough DER (X.690) to read the parts of an X.509 certificate the
// chain check needs, as exact byte ranges: the TBS bytes the signature
// covers, the signature algorithm, issuer and subject names, validity, the
// basicConstraints cA flag and the subject key. Node's X509Certificate
// parses each certificate too (the full syntax check); this reader exists
// because X509Certificate exposes neither the raw TBS bytes nor raw names,
// and its `verify` accepts any algorithm OpenSSL knows.

const OID = {
  ecPublicKey: '1.2.840.10045.2.1',
  secp256r1: '1.2.840.10045.3.1.7',
  secp384r1: '1.3.132.0.34',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  basicConstraints: '2.5.29.19',
};

class DerError extends Error {}

/** One TLV: tag byte, the whole encoding, and the contents. */
function readTlv(bytes, pos, end) {
  if (pos >= end) throw new DerError('unexpected end of data');
  const tag = bytes[pos];
  if ((tag & 0x1f) === 0x1f) throw new DerError('high-tag-number form is not used in certificates');
  if (pos + 1 >= end) throw new DerError('unexpected end of data in a length');
  let len = bytes[pos + 1];
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError('indefinite length is not DER');
    if (n > 4) throw new DerError('length too large');
    if (start + n > end) throw new DerError('unexpected end of data in a length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + bytes[start + i];
    if (len < 0x80 || bytes[start] === 0) throw new DerError('length is not minimally encoded');
    start += n;
  }
  if (start + len > end) throw new DerError('length runs past the end of its container');
  return { tag, start: pos, contentStart: start, end: start + len, bytes };
}

const contents = (t) => t.bytes.subarray(t.contentStart, t.end);
const whole = (t) => t.bytes.subarray(t.start, t.end);

/** The TLVs directly inside a constructed value. */
function children(t) {
  const out = [];
  for (let pos = t.contentStart; pos < t.end; ) {
    const child = readTlv(t.bytes, pos, t.end);
    out.push(child);
    pos = child.end;
  }
  return out;
}

function expectTag(t, tag, what) {
  if (!t || t.tag !== tag) throw new DerError(`expected ${what}`);
  return t;
}

function decodeOid(t) {
  const b = contents(expectTag(t, 0x06, 'an OBJECT IDENTIFIER'));
  if (b.length === 0 || b[b.length - 1] & 0x80) throw new DerError('malformed OBJECT IDENTIFIER');
  const arcs = [];
  let value = 0n;
  for (let i = 0; i < b.length; i++) {
    if (value === 0n && b[i] === 0x80) throw new DerError('OBJECT IDENTIFIER arc is not minimally encoded');
    value = (value << 7n) | BigInt(b[i] & 0x7f);
    if (!(b[i] & 0x80)) {
      arcs.push(value);
      value = 0n;
    }
  }
  const first = arcs[0] < 80n ? arcs[0] / 40n : 2n;
  return [first, arcs[0] - first * 40n, ...arcs.slice(1)].join('.');
}

/** AlgorithmIdentifier: `{ oid, params }`, params the raw DER or null when absent. */
function algorithmIdentifier(t) {
  const [oid, params, ...rest] = children(expectTag(t, 0x30, 'an AlgorithmIdentifier'));
  if (rest.length) throw new DerError('AlgorithmIdentifier has extra fields');
  return { oid: decodeOid(oid), params: params ? whole(params) : null, der: whole(t) };
}

/** UTCTime or GeneralizedTime, DER form (`Z`, whole seconds), to ms since the epoch. */
function decodeTime(t) {
  const text = String.fromCharCode(...contents(t));
  let m;
  let year;
  if (t.tag === 0x17 && (m = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text))) {
    year = Number(m[1]);
    year += year < 50 ? 2000 : 1900;
  } else if (t.tag === 0x18 && (m = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text))) {
    year = Number(m[1]);
  } else {
    throw new DerError(`malformed time ${JSON.stringify(text)}`);
  }
  const [month, day, hour, minute, second] = m.slice(2).map(Number);
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  const back = new Date(ms);
  if (
    back.getUTCFullYear() !== year ||
    back.getUTCMonth() !== month - 1 ||
    back.getUTCDate() !== day ||
    back.getUTCHours() !== hour ||
    back.getUTCMinutes() !== minute ||
    back.getUTCSeconds() !== second
  ) {
    throw new DerError(`invalid date ${JSON.stringify(text)}`);
  }
  return ms;
}

/** BIT STRING contents as bytes; null if it has unused bits. */
function bitStringBytes(t) {
  const b = contents(expectTag(t, 0x03, 'a BIT STRING'));
  if (b.length === 0) throw new DerError('empty BIT STRING');
  return b[0] === 0 ? b.subarray(1) : null;
}

/**
 * `cA` of basicConstraints: null when the extension is absent; throws
 * `{ extension: reason }` (a BadExtension) when it is malformed or repeated.
 */
function basicConstraintsCa(extensions) {
  const matching = extensions.filter((e) => e.oid === OID.basicConstraints);
  if (matching.length === 0) return null;
  if (matching.length > 1) throw new ExtensionError('basicConstraints appears more than once');
  try {
    const value = matching[0].value;
    const seq = readTlv(value, 0, value.length);
    if (seq.end !== value.length) throw new DerError('trailing data');
    const fields = children(expectTag(seq, 0x30, 'a SEQUENCE'));
    let ca = false;
    if (fields[0] && fields[0].tag === 0x01) {
      const b = contents(fields[0]);
      if (b.length !== 1 || (b[0] !== 0 && b[0] !== 0xff)) throw new DerError('malformed BOOLEAN');
      ca = b[0] === 0xff;
      fields.shift();
    }
    if (fields.length > 1 || (fields.length === 1 && fields[0].tag !== 0x02)) throw new DerError('unexpected field');
    return ca;
  } catch (e) {
    if (e instanceof DerError) throw new ExtensionError(`basicConstraints: ${e.message}`);
    throw e;
  }
}

/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } */
function parseExtension(t) {
  const fields = children(expectTag(t, 0x30, 'an Extension'));
  const oid = decodeOid(fields[0]);
  let next = 1;
  if (fields[next] && fields[next].tag === 0x01) next++;
  const value = contents(expectTag(fields[next], 0x04, 'an extension OCTET STRING'));
  if (fields.length !== next + 1) throw new DerError('Extension has extra fields');
  return { oid, value };
}

class ExtensionError extends Error {}

/**
 * Parses the certificate's outer structure. Throws DerError (cannot parse)
 * or ExtensionError (malformed extension).
 */
function parseCertificate(der) {
  const top = readTlv(der, 0, der.length);
  if (top.end !== der.length) throw new DerError('trailing data after the certificate');
  const [tbs, sigAlg, sigValue, ...extra] = children(expectTag(top, 0x30, 'a Certificate SEQUENCE'));
  if (extra.length) throw new DerError('Certificate has extra fields');
  const tbsFields = children(expectTag(tbs, 0x30, 'a TBSCertificate SEQUENCE'));
  let i = 0;
  if (tbsFields[i] && tbsFields[i].tag === 0xa0) i++; // version
  expectTag(tbsFields[i++], 0x02, 'a serial number');
  const innerAlg = algorithmIdentifier(tbsFields[i++]);
  const issuer = whole(expectTag(tbsFields[i++], 0x30, 'an issuer Name'));
  const validity = children(expectTag(tbsFields[i++], 0x30, 'a Validity'));
  if (validity.length !== 2) throw new DerError('Validity must hold two times');
  const subject = whole(expectTag(tbsFields[i++], 0x30, 'a subject Name'));
  const spkiTlv = expectTag(tbsFields[i++], 0x30, 'a SubjectPublicKeyInfo');
  const spki = children(spkiTlv);
  if (spki.length !== 2) throw new DerError('SubjectPublicKeyInfo must hold two fields');
  let extensions = [];
  for (; i < tbsFields.length; i++) {
    const t = tbsFields[i];
    if (t.tag === 0xa3) {
      const [seq, ...trailing] = children(t);
      if (trailing.length) throw new DerError('trailing data after extensions');
      extensions = children(expectTag(seq, 0x30, 'Extensions')).map(parseExtension);
    } else if (t.tag !== 0x81 && t.tag !== 0x82 && t.tag !== 0xa1 && t.tag !== 0xa2) {
      throw new DerError('unexpected field in TBSCertificate');
    }
  }
  const outerAlg = algorithmIdentifier(sigAlg);
  const keyAlg = algorithmIdentifier(spki[0]);
  return {
    tbs: whole(tbs),
    outerAlg,
    innerAlg,
    signature: bitStringBytes(sigValue),
    issuer,
    subject,
    notBeforeMs: decodeTime(validity[0]),
    notAfterMs: decodeTime(validity[1]),
    spki: whole(spkiTlv),
    keyAlgOid: keyAlg.oid,
    keyAlgParams: keyAlg.params,
    keyPoint: bitStringBytes(spki[1]),
    basicConstraintsCa: () => basicConstraintsCa(extensions),
  };
}

export { parseCertificate, decodeOid, readTlv, ecdsaSignatureToRaw, DerError, ExtensionError, OID };

/**
 * An X.509 ECDSA signature (DER `SEQUENCE { r INTEGER, s INTEGER }`) as the
 * raw `r || s` Web Crypto verifies, each scalar `size` bytes. Strict DER:
 * minimal lengths and integers, both positive, nothing trailing.
 */
function ecdsaSignatureToRaw(der, size) {
  const seq = expectTag(readTlv(der, 0, der.length), 0x30, 'an ECDSA-Sig-Value SEQUENCE');
  if (seq.end !== der.length) throw new DerError('bytes after the signature');
  const ints = children(seq);
  if (ints.length !== 2) throw new DerError('an ECDSA signature has two integers');
  const out = new Uint8Array(2 * size);
  ints.forEach((t, i) => {
    let v = contents(expectTag(t, 0x02, 'an INTEGER'));
    if (v.length === 0) throw new DerError('empty INTEGER');
    if (v[0] & 0x80) throw new DerError('negative ECDSA scalar');
    if (v[0] === 0 && v.length > 1) {
      if (!(v[1] & 0x80)) throw new DerError('INTEGER is not minimally encoded');
      v = v.subarray(1);
    }
    if (v.length > size) throw new DerError('ECDSA scalar too large for the curve');
    out.set(v, (i + 1) * size - v.length);
  });
  return out;
}
