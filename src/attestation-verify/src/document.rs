//! Parsing of the COSE_Sign1 envelope and the NSM attestation payload.
//!
//! Everything here runs on untrusted bytes before any signature is checked, so the
//! parser is deliberately narrow: it decodes exactly the shapes the AWS NSM
//! specification allows, over a borrowed slice (`minicbor` never allocates for a
//! declared length: a length larger than what is left of the input is an
//! end-of-input error), and walks unknown values with an explicit depth limit.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::Decoder;

use crate::error::Error;

/// Largest document accepted, in bytes. Real documents are under 16 KiB (a
/// four-certificate chain plus three optional fields of at most 1 KiB each).
pub const MAX_DOCUMENT_LEN: usize = 64 * 1024;

/// Largest `public_key`, `user_data` or `nonce`, as the NSM API defines them.
pub const MAX_OPTIONAL_FIELD_LEN: usize = 1024;

/// Deepest nesting tolerated inside a value this parser does not interpret
/// (unknown payload fields, unprotected header). Known fields have fixed shapes.
pub const MAX_NESTING_DEPTH: usize = 16;

/// Unknown payload fields are tolerated (AWS may add fields) up to this many.
pub const MAX_UNKNOWN_FIELDS: usize = 16;

/// Longest `cabundle` accepted; AWS chains have four certificates.
pub const MAX_CABUNDLE_LEN: usize = 16;

const COSE_SIGN1_TAG: u64 = 18;
const COSE_ALG_LABEL: i64 = 1;
const COSE_CRIT_LABEL: i64 = 2;
pub(crate) const ES384: i64 = -35;
const ES384_SIGNATURE_LEN: usize = 96;
const PCR_COUNT: u64 = 32;

/// A parsed but **unverified** attestation document.
///
/// Obtain one with [`AttestationDocument::from_bytes`], then call
/// [`AttestationDocument::verify`]; nothing it contains should be trusted before that.
#[derive(Clone, Debug)]
pub struct AttestationDocument {
    /// The protected header bstr exactly as received: the Sig_structure covers these bytes.
    pub(crate) protected: Vec<u8>,
    /// The payload bstr exactly as received.
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: [u8; ES384_SIGNATURE_LEN],
    pub(crate) fields: Payload,
}

/// The decoded payload fields.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    pub module_id: String,
    pub digest: String,
    pub timestamp_ms: u64,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub certificate: Vec<u8>,
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

impl AttestationDocument {
    /// Parses a COSE_Sign1 attestation document (CBOR tag 18 optional).
    ///
    /// Checks structure only: sizes, types, the ES384 algorithm header, required
    /// payload fields, and that nothing follows the COSE array or the payload map.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(Error::InputTooLarge {
                len: bytes.len(),
                max: MAX_DOCUMENT_LEN,
            });
        }
        const CTX: &str = "COSE_Sign1 structure";
        let mut d = Decoder::new(bytes);
        if d.datatype().map_err(cbor(CTX))? == Type::Tag {
            let tag = d.tag().map_err(cbor(CTX))?.as_u64();
            if tag != COSE_SIGN1_TAG {
                return Err(Error::UnexpectedTag { tag });
            }
        }
        match d.array().map_err(cbor(CTX))? {
            Some(4) => {}
            other => {
                return Err(Error::MalformedCbor {
                    context: CTX,
                    reason: format!("expected an array of 4 items, found {}", len_desc(other)),
                })
            }
        }

        let protected = d.bytes().map_err(cbor("protected header"))?;
        check_protected_header(protected)?;

        // The unprotected header carries nothing we use (AWS sends `{}`), but it must
        // be a map and is walked with the depth limit like any uninterpreted value.
        match d.datatype().map_err(cbor("unprotected header"))? {
            Type::Map | Type::MapIndef => skip_value(&mut d, "unprotected header", 0)?,
            other => {
                return Err(Error::MalformedCbor {
                    context: "unprotected header",
                    reason: format!("expected a map, found {other}"),
                })
            }
        }

        let payload = d.bytes().map_err(cbor("payload"))?;
        let signature = d.bytes().map_err(cbor("signature"))?;
        let signature: [u8; ES384_SIGNATURE_LEN] =
            signature.try_into().map_err(|_| Error::SignatureLength {
                len: signature.len(),
            })?;
        expect_end(&d, CTX)?;

        let fields = Payload::parse(payload)?;
        Ok(Self {
            protected: protected.to_vec(),
            payload: payload.to_vec(),
            signature,
            fields,
        })
    }

    /// The document's own timestamp (ms since the UNIX epoch). Unverified.
    pub fn timestamp_ms(&self) -> u64 {
        self.fields.timestamp_ms
    }

    /// The Sig_structure the COSE signature covers (RFC 9052 §4.4):
    /// `["Signature1", protected, external_aad = h'', payload]`.
    pub(crate) fn sig_structure(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.protected.len() + self.payload.len() + 32);
        let mut e = minicbor::Encoder::new(&mut buf);
        // Writing to a Vec cannot fail; the Result only exists for fallible writers.
        let _ = e
            .array(4)
            .and_then(|e| e.str("Signature1"))
            .and_then(|e| e.bytes(&self.protected))
            .and_then(|e| e.bytes(&[]))
            .and_then(|e| e.bytes(&self.payload));
        buf
    }
}

fn check_protected_header(protected: &[u8]) -> Result<(), Error> {
    const CTX: &str = "protected header";
    let mut d = Decoder::new(protected);
    let mut alg = None;
    let mut seen_entries = 0usize;
    for_each_map_entry(&mut d, CTX, |d| {
        seen_entries += 1;
        if seen_entries > MAX_UNKNOWN_FIELDS {
            return Err(Error::MalformedCbor {
                context: CTX,
                reason: format!("more than {MAX_UNKNOWN_FIELDS} entries"),
            });
        }
        match d.datatype().map_err(cbor(CTX))? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
                let label = d.u64().map_err(cbor(CTX))?;
                if label == COSE_ALG_LABEL as u64 {
                    if alg.is_some() {
                        return Err(Error::MalformedCbor {
                            context: CTX,
                            reason: "algorithm label appears twice".into(),
                        });
                    }
                    alg = Some(read_alg(d)?);
                } else if label == COSE_CRIT_LABEL as u64 {
                    return Err(Error::CriticalHeader);
                } else {
                    skip_value(d, CTX, 1)?;
                }
            }
            _ => {
                skip_value(d, CTX, 1)?;
                skip_value(d, CTX, 1)?;
            }
        }
        Ok(())
    })?;
    expect_end(&d, CTX)?;
    match alg {
        Some(ES384) => Ok(()),
        Some(found) => Err(Error::UnsupportedAlgorithm { found }),
        None => Err(Error::MissingAlgorithm),
    }
}

fn read_alg(d: &mut Decoder<'_>) -> Result<i64, Error> {
    match d.datatype().map_err(cbor("protected header"))? {
        Type::String => Err(Error::MalformedCbor {
            context: "protected header",
            reason: "text algorithm names are not supported".into(),
        }),
        _ => {
            let alg = d.int().map_err(cbor("protected header"))?;
            // Out-of-i64 values are certainly not ES384; report the saturated value.
            Ok(i64::try_from(alg).unwrap_or(i64::MIN))
        }
    }
}

impl Payload {
    fn parse(bytes: &[u8]) -> Result<Self, Error> {
        const CTX: &str = "payload";
        let mut d = Decoder::new(bytes);
        let mut b = PayloadBuilder::default();
        for_each_map_entry(&mut d, CTX, |d| {
            let key = d.str().map_err(cbor("payload key"))?;
            b.field(key, d)
        })?;
        expect_end(&d, CTX)?;
        b.finish()
    }
}

#[derive(Default)]
struct PayloadBuilder {
    module_id: Option<String>,
    digest: Option<String>,
    timestamp_ms: Option<u64>,
    pcrs: Option<BTreeMap<u8, Vec<u8>>>,
    certificate: Option<Vec<u8>>,
    cabundle: Option<Vec<Vec<u8>>>,
    public_key: Option<Option<Vec<u8>>>,
    user_data: Option<Option<Vec<u8>>>,
    nonce: Option<Option<Vec<u8>>>,
    unknown: usize,
}

/// Stores `value` in `slot`, refusing a second occurrence of the same key: a
/// duplicate could let two parsers of the same bytes disagree on the value.
fn set_once<T>(slot: &mut Option<T>, field: &str, value: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::DuplicateField {
            field: field.to_owned(),
        });
    }
    *slot = Some(value);
    Ok(())
}

impl PayloadBuilder {
    fn field(&mut self, key: &str, d: &mut Decoder<'_>) -> Result<(), Error> {
        match key {
            "module_id" => {
                let v = d.str().map_err(cbor("module_id"))?;
                if v.is_empty() {
                    return Err(invalid("module_id", "empty"));
                }
                set_once(&mut self.module_id, key, v.to_owned())
            }
            "digest" => {
                let v = d.str().map_err(cbor("digest"))?;
                if v != "SHA384" {
                    return Err(invalid("digest", format!("{v:?}, expected \"SHA384\"")));
                }
                set_once(&mut self.digest, key, v.to_owned())
            }
            "timestamp" => {
                let v = d.u64().map_err(cbor("timestamp"))?;
                set_once(&mut self.timestamp_ms, key, v)
            }
            "pcrs" => {
                let v = parse_pcrs(d)?;
                set_once(&mut self.pcrs, key, v)
            }
            "certificate" => {
                let v = d.bytes().map_err(cbor("certificate"))?;
                if v.is_empty() {
                    return Err(invalid("certificate", "empty"));
                }
                set_once(&mut self.certificate, key, v.to_vec())
            }
            "cabundle" => {
                let v = parse_cabundle(d)?;
                set_once(&mut self.cabundle, key, v)
            }
            "public_key" => {
                let v = optional_bytes(d, "public_key")?;
                set_once(&mut self.public_key, key, v)
            }
            "user_data" => {
                let v = optional_bytes(d, "user_data")?;
                set_once(&mut self.user_data, key, v)
            }
            "nonce" => {
                let v = optional_bytes(d, "nonce")?;
                set_once(&mut self.nonce, key, v)
            }
            _ => {
                self.unknown += 1;
                if self.unknown > MAX_UNKNOWN_FIELDS {
                    return Err(Error::TooManyUnknownFields {
                        max: MAX_UNKNOWN_FIELDS,
                    });
                }
                skip_value(d, "payload", 1)
            }
        }
    }

    fn finish(self) -> Result<Payload, Error> {
        fn req<T>(v: Option<T>, field: &'static str) -> Result<T, Error> {
            v.ok_or(Error::MissingField { field })
        }
        Ok(Payload {
            module_id: req(self.module_id, "module_id")?,
            digest: req(self.digest, "digest")?,
            timestamp_ms: req(self.timestamp_ms, "timestamp")?,
            pcrs: req(self.pcrs, "pcrs")?,
            certificate: req(self.certificate, "certificate")?,
            cabundle: req(self.cabundle, "cabundle")?,
            public_key: self.public_key.flatten(),
            user_data: self.user_data.flatten(),
            nonce: self.nonce.flatten(),
        })
    }
}

fn parse_pcrs(d: &mut Decoder<'_>) -> Result<BTreeMap<u8, Vec<u8>>, Error> {
    let mut pcrs = BTreeMap::new();
    for_each_map_entry(d, "pcrs", |d| {
        if pcrs.len() == PCR_COUNT as usize {
            return Err(Error::InvalidPcr {
                reason: format!("more than {PCR_COUNT} entries"),
            });
        }
        let index = d.u64().map_err(cbor("pcrs"))?;
        let index = u8::try_from(index)
            .ok()
            .filter(|&i| u64::from(i) < PCR_COUNT)
            .ok_or_else(|| Error::InvalidPcr {
                reason: format!("index {index} is not below {PCR_COUNT}"),
            })?;
        let value = d.bytes().map_err(cbor("pcrs"))?;
        if !matches!(value.len(), 32 | 48 | 64) {
            return Err(Error::InvalidPcr {
                reason: format!("PCR{index} is {} bytes, not 32, 48 or 64", value.len()),
            });
        }
        if pcrs.insert(index, value.to_vec()).is_some() {
            return Err(Error::InvalidPcr {
                reason: format!("PCR{index} appears twice"),
            });
        }
        Ok(())
    })?;
    if pcrs.is_empty() {
        return Err(Error::InvalidPcr {
            reason: "no entries".into(),
        });
    }
    Ok(pcrs)
}

fn parse_cabundle(d: &mut Decoder<'_>) -> Result<Vec<Vec<u8>>, Error> {
    let mut certs = Vec::new();
    for_each_array_item(d, "cabundle", |d| {
        if certs.len() == MAX_CABUNDLE_LEN {
            return Err(invalid(
                "cabundle",
                format!("more than {MAX_CABUNDLE_LEN} certificates"),
            ));
        }
        let cert = d.bytes().map_err(cbor("cabundle"))?;
        if cert.is_empty() {
            return Err(invalid(
                "cabundle",
                format!("entry {} is empty", certs.len()),
            ));
        }
        certs.push(cert.to_vec());
        Ok(())
    })?;
    if certs.is_empty() {
        return Err(invalid("cabundle", "empty"));
    }
    Ok(certs)
}

/// `public_key`, `user_data` and `nonce`: a byte string (possibly empty) or null.
/// Empty and null stay distinct (`Some(vec![])` vs `None`), as verifiers report them.
fn optional_bytes(d: &mut Decoder<'_>, field: &'static str) -> Result<Option<Vec<u8>>, Error> {
    if d.datatype().map_err(cbor(field))? == Type::Null {
        d.null().map_err(cbor(field))?;
        return Ok(None);
    }
    let v = d.bytes().map_err(cbor(field))?;
    if v.len() > MAX_OPTIONAL_FIELD_LEN {
        return Err(invalid(
            field,
            format!("{} bytes, more than {MAX_OPTIONAL_FIELD_LEN}", v.len()),
        ));
    }
    Ok(Some(v.to_vec()))
}

/// Calls `entry` once per map entry, for definite and indefinite maps alike.
/// `entry` must consume exactly one key and one value.
fn for_each_map_entry<'b>(
    d: &mut Decoder<'b>,
    context: &'static str,
    entry: impl FnMut(&mut Decoder<'b>) -> Result<(), Error>,
) -> Result<(), Error> {
    let len = d.map().map_err(cbor(context))?;
    for_each_item(d, context, len, entry)
}

/// Array counterpart of [`for_each_map_entry`].
fn for_each_array_item<'b>(
    d: &mut Decoder<'b>,
    context: &'static str,
    item: impl FnMut(&mut Decoder<'b>) -> Result<(), Error>,
) -> Result<(), Error> {
    let len = d.array().map_err(cbor(context))?;
    for_each_item(d, context, len, item)
}

/// Calls `item` `len` times, or until the break byte if `len` is `None`.
fn for_each_item<'b>(
    d: &mut Decoder<'b>,
    context: &'static str,
    len: Option<u64>,
    mut item: impl FnMut(&mut Decoder<'b>) -> Result<(), Error>,
) -> Result<(), Error> {
    match len {
        // A declared count costs nothing to honour: every item consumes input, so
        // an absurd count ends at end-of-input after at most `input.len()` steps.
        Some(n) => (0..n).try_for_each(|_| item(d)),
        None => loop {
            if d.datatype().map_err(cbor(context))? == Type::Break {
                d.skip().map_err(cbor(context))?;
                return Ok(());
            }
            item(d)?;
        },
    }
}

/// Skips one value of any type, refusing nesting deeper than [`MAX_NESTING_DEPTH`].
///
/// Hand-written rather than `Decoder::skip` because that one has no depth limit
/// (it keeps its own heap stack instead); here the recursion depth is the limit.
pub(crate) fn skip_value(
    d: &mut Decoder<'_>,
    context: &'static str,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_NESTING_DEPTH {
        return Err(Error::NestingTooDeep {
            context,
            max: MAX_NESTING_DEPTH,
        });
    }
    match d.datatype().map_err(cbor(context))? {
        Type::Array | Type::ArrayIndef => {
            for_each_array_item(d, context, |d| skip_value(d, context, depth + 1))
        }
        Type::Map | Type::MapIndef => for_each_map_entry(d, context, |d| {
            skip_value(d, context, depth + 1)?;
            skip_value(d, context, depth + 1)
        }),
        Type::Tag => {
            d.tag().map_err(cbor(context))?;
            skip_value(d, context, depth + 1)
        }
        Type::Break => Err(Error::MalformedCbor {
            context,
            reason: "unexpected break".into(),
        }),
        // Scalars and (possibly chunked) strings: `skip` is flat for these.
        _ => d.skip().map_err(cbor(context)),
    }
}

fn expect_end(d: &Decoder<'_>, context: &'static str) -> Result<(), Error> {
    let count = d.input().len() - d.position();
    if count != 0 {
        return Err(Error::TrailingBytes { context, count });
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn len_desc(len: Option<u64>) -> String {
    match len {
        Some(n) => format!("{n} items"),
        None => "an indefinite-length array".into(),
    }
}

/// Maps a decoder error into [`Error`], singling out end-of-input as truncation.
fn cbor(context: &'static str) -> impl Fn(minicbor::decode::Error) -> Error {
    move |e| {
        if e.is_end_of_input() {
            Error::Truncated { context }
        } else {
            Error::MalformedCbor {
                context,
                reason: e.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_refuses_deep_nesting_without_size_cap() {
        // 200,000 nested arrays: well-formed CBOR, far past the depth limit.
        let mut bytes = vec![0x81; 200_000];
        bytes.push(0x00);
        let mut d = Decoder::new(&bytes);
        assert_eq!(
            skip_value(&mut d, "test", 0),
            Err(Error::NestingTooDeep {
                context: "test",
                max: MAX_NESTING_DEPTH
            })
        );
        // Same with indefinite maps (nesting through values), maps nesting through
        // their keys, and tag chains.
        let bytes = [0xbf, 0x00].repeat(100_000);
        let mut d = Decoder::new(&bytes);
        assert!(matches!(
            skip_value(&mut d, "test", 0),
            Err(Error::NestingTooDeep { .. })
        ));
        let bytes = [vec![0xa1; 200_000], vec![0x00; 200_001]].concat();
        let mut d = Decoder::new(&bytes);
        assert!(matches!(
            skip_value(&mut d, "test", 0),
            Err(Error::NestingTooDeep { .. })
        ));
        let mut bytes = vec![0xc6; 200_000];
        bytes.push(0x00);
        let mut d = Decoder::new(&bytes);
        assert!(matches!(
            skip_value(&mut d, "test", 0),
            Err(Error::NestingTooDeep { .. })
        ));
    }

    #[test]
    fn skip_accepts_nesting_at_the_limit() {
        let mut bytes = vec![0x81; MAX_NESTING_DEPTH];
        bytes.push(0x00);
        let mut d = Decoder::new(&bytes);
        assert_eq!(skip_value(&mut d, "test", 0), Ok(()));
        assert_eq!(d.position(), bytes.len());
    }

    #[test]
    fn absurd_declared_lengths_fail_as_truncation() {
        // bstr, array and map each claiming 2^60 elements, with a few bytes behind.
        for major in [0x5b, 0x9b, 0xbb] {
            let mut bytes = vec![major, 0x10, 0, 0, 0, 0, 0, 0, 0];
            bytes.extend_from_slice(&[0; 16]);
            let mut d = Decoder::new(&bytes);
            assert_eq!(
                skip_value(&mut d, "test", 0),
                Err(Error::Truncated { context: "test" }),
                "major byte {major:#x}"
            );
        }
    }
}
