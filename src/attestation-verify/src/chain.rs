//! Certificate chain verification: `root = cabundle[0] -> ... -> cabundle[n-1] -> leaf`.
//!
//! This is not a general X.509 path builder: the chain order is fixed by the
//! document, the anchor is compared byte for byte, and only the ECDSA algorithms
//! the AWS chain uses (plus their P-256/SHA-256 siblings) are accepted.

use der::{Decode, Header, Reader, SliceReader};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use crate::error::{CertPosition, Error};
use crate::root::TrustedRoot;

const ID_EC_PUBLIC_KEY: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ECDSA_WITH_SHA256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// An issuer's public key, typed by curve.
pub(crate) enum EcKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// A parsed certificate together with the exact TBS bytes its signature covers.
struct ParsedCert<'a> {
    position: CertPosition,
    cert: Certificate,
    tbs_der: &'a [u8],
}

impl<'a> ParsedCert<'a> {
    fn parse(der_bytes: &'a [u8], position: CertPosition) -> Result<Self, Error> {
        let parse_err = |e: der::Error| Error::CertificateParse {
            cert: position,
            reason: e.to_string(),
        };
        let cert = Certificate::from_der(der_bytes).map_err(parse_err)?;
        // The signature covers the TBS bytes as received, which need not be what a
        // re-encoding of the parsed structure would produce: slice them out.
        let mut reader = SliceReader::new(der_bytes).map_err(parse_err)?;
        Header::decode(&mut reader).map_err(parse_err)?;
        let tbs_der = reader.tlv_bytes().map_err(parse_err)?;
        if cert.signature_algorithm != cert.tbs_certificate.signature {
            return Err(Error::CertificateParse {
                cert: position,
                reason: "outer and inner signature algorithms differ".into(),
            });
        }
        Ok(Self {
            position,
            cert,
            tbs_der,
        })
    }

    fn public_key(&self) -> Result<EcKey, Error> {
        subject_key(&self.cert, self.position)
    }

    /// Checks that `issuer` signed this certificate and that the names chain.
    fn check_issued_by(&self, issuer: &ParsedCert<'_>) -> Result<(), Error> {
        let alg = &self.cert.signature_algorithm;
        let unsupported = || Error::UnsupportedCertSignatureAlgorithm {
            cert: self.position,
            oid: alg.oid.to_string(),
        };
        // RFC 5758: ecdsa-with-SHA* algorithm identifiers have absent parameters.
        if alg.parameters.is_some() {
            return Err(unsupported());
        }
        let digest: Vec<u8> = match alg.oid {
            ECDSA_WITH_SHA256 => Sha256::digest(self.tbs_der).to_vec(),
            ECDSA_WITH_SHA384 => Sha384::digest(self.tbs_der).to_vec(),
            _ => return Err(unsupported()),
        };
        let bad_sig = || Error::CertificateSignature {
            cert: self.position,
        };
        let sig = self.cert.signature.as_bytes().ok_or_else(bad_sig)?;
        let verified = match issuer.public_key()? {
            EcKey::P256(key) => p256::ecdsa::Signature::from_der(sig)
                .and_then(|sig| key.verify_prehash(&digest, &sig)),
            EcKey::P384(key) => p384::ecdsa::Signature::from_der(sig)
                .and_then(|sig| key.verify_prehash(&digest, &sig)),
        };
        verified.map_err(|_| bad_sig())?;
        if self.cert.tbs_certificate.issuer != issuer.cert.tbs_certificate.subject {
            return Err(Error::IssuerMismatch {
                cert: self.position,
            });
        }
        Ok(())
    }

    /// Valid from notBefore through notAfter, both inclusive (RFC 5280 §4.1.2.5).
    /// X.509 times have one-second resolution, so notAfter means its `.000` ms
    /// instant: one millisecond later the certificate has expired.
    fn check_valid_at(&self, at_ms: u64) -> Result<(), Error> {
        let validity = &self.cert.tbs_certificate.validity;
        let ms = |t: x509_cert::time::Time| {
            u64::try_from(t.to_unix_duration().as_millis()).unwrap_or(u64::MAX)
        };
        let not_before_ms = ms(validity.not_before);
        let not_after_ms = ms(validity.not_after);
        if at_ms < not_before_ms || at_ms > not_after_ms {
            return Err(Error::CertificateNotValidAt {
                cert: self.position,
                at_ms,
                not_before_ms,
                not_after_ms,
            });
        }
        Ok(())
    }

    /// `cA` from basicConstraints; an absent extension means "not a CA".
    fn is_ca(&self) -> Result<bool, Error> {
        let constraints = self
            .cert
            .tbs_certificate
            .get::<BasicConstraints>()
            .map_err(|e| Error::BadExtension {
                cert: self.position,
                reason: e.to_string(),
            })?;
        Ok(constraints.is_some_and(|(_critical, bc)| bc.ca))
    }
}

/// Verifies the chain and returns the leaf's public key.
///
/// Order of checks, per certificate from the root down: parse, signature by the
/// previous certificate, CA flag, validity at `at_ms`.
pub(crate) fn verify_chain(
    root: &TrustedRoot,
    cabundle: &[Vec<u8>],
    leaf: &[u8],
    at_ms: u64,
) -> Result<EcKey, Error> {
    let first = cabundle.first().ok_or(Error::InvalidField {
        field: "cabundle",
        reason: "empty".into(),
    })?;
    if first.as_slice() != root.der() {
        return Err(Error::RootMismatch {
            expected: root.sha256_hex(),
            got: hex::encode(Sha256::digest(first)),
        });
    }

    let mut issuer = ParsedCert::parse(first, CertPosition::CaBundle(0))?;
    check_ca(&issuer)?;
    issuer.check_valid_at(at_ms)?;
    for (i, der_bytes) in cabundle.iter().enumerate().skip(1) {
        let cert = ParsedCert::parse(der_bytes, CertPosition::CaBundle(i))?;
        cert.check_issued_by(&issuer)?;
        check_ca(&cert)?;
        cert.check_valid_at(at_ms)?;
        issuer = cert;
    }

    let leaf = ParsedCert::parse(leaf, CertPosition::Leaf)?;
    leaf.check_issued_by(&issuer)?;
    if leaf.is_ca()? {
        return Err(Error::LeafIsCa);
    }
    leaf.check_valid_at(at_ms)?;
    leaf.public_key()
}

fn check_ca(cert: &ParsedCert<'_>) -> Result<(), Error> {
    if !cert.is_ca()? {
        return Err(Error::NotACa {
            cert: cert.position,
        });
    }
    Ok(())
}

fn subject_key(cert: &Certificate, position: CertPosition) -> Result<EcKey, Error> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let unsupported = |reason: String| Error::UnsupportedPublicKey {
        cert: position,
        reason,
    };
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(unsupported(format!(
            "algorithm {} is not id-ecPublicKey",
            spki.algorithm.oid
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .ok_or_else(|| unsupported("no curve parameters".into()))?
        .decode_as::<der::oid::ObjectIdentifier>()
        .map_err(|e| unsupported(format!("curve parameters: {e}")))?;
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| unsupported("key bit string has unused bits".into()))?;
    let bad_point = |_| unsupported("invalid curve point".into());
    match curve {
        SECP384R1 => p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map(EcKey::P384)
            .map_err(bad_point),
        SECP256R1 => p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map(EcKey::P256)
            .map_err(bad_point),
        other => Err(unsupported(format!("curve {other} is not P-256 or P-384"))),
    }
}
