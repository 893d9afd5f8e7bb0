//! Chain checks that no real AWS chain can fail, reached with chains and documents
//! built here from real keys and signatures: rcgen issues the certificates, p384
//! signs the COSE_Sign1, and the payload is the NSM's map encoded with minicbor.
//! Each negative case differs from the verifying positive control in exactly one
//! property, so the error it gets is the check it targets.

mod common;

use attestation_verify::{
    CertPosition, CheckTime, Error, Policy, TrustedRoot, VerifiedDocument, MAX_CABUNDLE_LEN,
};
use common::{encode_bytes, encode_pcr_map, encode_protected, encode_text, Cose, Fields};
use der::Decode;
use minicbor::Encoder;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use rand_core::OsRng;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    PublicKeyData, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use time::{Duration, OffsetDateTime};
use x509_cert::ext::pkix::BasicConstraints as X509BasicConstraints;

/// The leaf's notBefore (2025-06-15, UNIX seconds); it is valid for three hours, as
/// AWS leaves are. CAs are valid from a day before to a month after.
const LEAF_NOT_BEFORE: i64 = 1_750_000_000;
const LEAF_LIFETIME: Duration = Duration::hours(3);
/// When documents are made: one hour into the leaf's life.
const DOC_TIMESTAMP_MS: u64 = (LEAF_NOT_BEFORE as u64 + 3600) * 1000;

const P384: &SignatureAlgorithm = &PKCS_ECDSA_P384_SHA384;
const P256: &SignatureAlgorithm = &PKCS_ECDSA_P256_SHA256;
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

fn unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn ca() -> IsCa {
    IsCa::Ca(BasicConstraints::Unconstrained)
}

fn params(
    common_name: &str,
    is_ca: IsCa,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = is_ca;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn ca_params(common_name: &str, is_ca: IsCa) -> CertificateParams {
    let start = unix(LEAF_NOT_BEFORE);
    params(
        common_name,
        is_ca,
        start - Duration::days(1),
        start + Duration::days(30),
    )
}

fn leaf_params(is_ca: IsCa) -> CertificateParams {
    let start = unix(LEAF_NOT_BEFORE);
    params("synthetic enclave", is_ca, start, start + LEAF_LIFETIME)
}

/// A certificate (CA or not) together with its parameters and the key that signs under it
/// (rcgen 0.14 issues from the parameters and key, not from the certificate).
struct Issuer {
    cert: Certificate,
    params: CertificateParams,
    key: KeyPair,
}

impl Issuer {
    /// A self-signed root with a fresh `alg` key.
    fn root(alg: &'static SignatureAlgorithm, is_ca: IsCa) -> Self {
        let key = KeyPair::generate_for(alg).unwrap();
        let params = ca_params("synthetic root", is_ca);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, params, key }
    }

    /// A certificate for a fresh `alg` key, issued by `self`; rcgen signs with the
    /// issuer's algorithm, so the curve of `self` decides the signature's.
    fn issue(&self, common_name: &str, is_ca: IsCa, alg: &'static SignatureAlgorithm) -> Self {
        let key = KeyPair::generate_for(alg).unwrap();
        let params = ca_params(common_name, is_ca);
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        Self { cert, params, key }
    }

    /// `self` as rcgen's issuer.
    fn issuer(&self) -> rcgen::Issuer<'_, &KeyPair> {
        rcgen::Issuer::from_params(&self.params, &self.key)
    }

    /// A leaf certifying `subject`, issued by `self`.
    fn issue_leaf(&self, subject: &impl PublicKeyData, is_ca: IsCa) -> Vec<u8> {
        leaf_params(is_ca)
            .signed_by(subject, &self.issuer())
            .unwrap()
            .der()
            .to_vec()
    }

    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    fn trusted(&self) -> TrustedRoot {
        TrustedRoot::from_der(self.cert.der()).unwrap()
    }
}

/// The enclave's P-384 key. The leaf certifies its public point, so the
/// certificate names exactly the key that signs the COSE_Sign1.
struct EnclaveKey {
    signing: SigningKey,
    point: p384::EncodedPoint,
}

impl EnclaveKey {
    fn generate() -> Self {
        let signing = SigningKey::random(&mut OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        Self { signing, point }
    }
}

impl PublicKeyData for EnclaveKey {
    fn der_bytes(&self) -> &[u8] {
        self.point.as_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        P384
    }
}

/// A document in the NSM's format (untagged, ES384, the AWS payload map with
/// non-debug PCRs), signed by `signer` over `["Signature1", protected, h'', payload]`.
fn document(cabundle: &[Vec<u8>], leaf: &[u8], signer: &SigningKey) -> Vec<u8> {
    let mut timestamp = Encoder::new(Vec::new());
    timestamp.u64(DOC_TIMESTAMP_MS).unwrap();
    let null = vec![0xf6];
    let pcrs: Vec<_> = (0..16u8).map(|i| (u64::from(i), vec![i + 1; 48])).collect();
    let mut fields = Fields(Vec::new());
    fields.set("module_id", encode_text("i-synthetic-enc0123456789abcdef"));
    fields.set("digest", encode_text("SHA384"));
    fields.set("timestamp", timestamp.into_writer());
    fields.set("pcrs", encode_pcr_map(&pcrs));
    fields.set_bytes("certificate", leaf);
    fields.set_cabundle(cabundle);
    fields.set("public_key", encode_bytes(b"enclave public key"));
    fields.set("user_data", null.clone());
    fields.set("nonce", null);
    let payload = fields.encode();
    let protected = encode_protected(&[(1, -35)]);

    let mut to_be_signed = Encoder::new(Vec::new());
    to_be_signed
        .array(4)
        .unwrap()
        .str("Signature1")
        .unwrap()
        .bytes(&protected)
        .unwrap()
        .bytes(&[])
        .unwrap()
        .bytes(&payload)
        .unwrap();
    let signature: Signature = signer.sign(&to_be_signed.into_writer());
    Cose {
        tagged: false,
        protected,
        unprotected_raw: vec![0xa0],
        payload,
        signature: signature.to_bytes().to_vec(),
    }
    .encode()
}

fn verify_at(root: &Issuer, doc: &[u8], policy: &Policy) -> Result<VerifiedDocument, Error> {
    attestation_verify::verify(doc, &root.trusted(), policy)
}

fn verify(root: &Issuer, doc: &[u8]) -> Result<VerifiedDocument, Error> {
    verify_at(
        root,
        doc,
        &Policy::default().check_time(CheckTime::DocumentTimestamp),
    )
}

/// The positive control: P-384 root → intermediate → leaf, as AWS builds them.
struct Chain {
    root: Issuer,
    intermediate: Issuer,
    enclave: EnclaveKey,
}

impl Chain {
    fn new() -> Self {
        let root = Issuer::root(P384, ca());
        let intermediate = root.issue("synthetic intermediate", ca(), P384);
        Self {
            root,
            intermediate,
            enclave: EnclaveKey::generate(),
        }
    }

    fn cabundle(&self) -> Vec<Vec<u8>> {
        vec![self.root.der(), self.intermediate.der()]
    }

    /// A document whose leaf is `leaf`, signed by the enclave key.
    fn document_with_leaf(&self, leaf: &[u8]) -> Vec<u8> {
        document(&self.cabundle(), leaf, &self.enclave.signing)
    }

    fn document(&self) -> Vec<u8> {
        let leaf = self
            .intermediate
            .issue_leaf(&self.enclave, IsCa::ExplicitNoCa);
        self.document_with_leaf(&leaf)
    }
}

#[test]
fn well_formed_synthetic_chain_verifies() {
    let chain = Chain::new();
    let verified = verify(&chain.root, &chain.document()).unwrap();
    assert_eq!(verified.timestamp_ms(), DOC_TIMESTAMP_MS);
    assert_eq!(verified.module_id(), "i-synthetic-enc0123456789abcdef");
    assert_eq!(verified.public_key(), Some(&b"enclave public key"[..]));
    assert_eq!(verified.nonce(), None);
    assert!(!verified.is_debug());
    // And it is the root that makes it verify: another synthetic root does not.
    let stranger = Issuer::root(P384, ca());
    assert!(matches!(
        verify(&stranger, &chain.document()),
        Err(Error::RootMismatch { .. })
    ));
}

/// `cA` as the verifier's X.509 parser reads it: `None` if the extension is absent.
fn basic_constraints_ca(der: &[u8]) -> Option<bool> {
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    let constraints = cert.tbs_certificate.get::<X509BasicConstraints>().unwrap();
    constraints.map(|(_critical, bc)| bc.ca)
}

#[test]
fn an_issuer_that_is_not_a_ca_is_refused_by_position() {
    // basicConstraints with cA = false, and no basicConstraints at all.
    for (is_ca, expected_ext) in [(IsCa::ExplicitNoCa, Some(false)), (IsCa::NoCa, None)] {
        let chain = Chain::new();
        let not_ca = chain.intermediate.issue("not a CA", is_ca, P384);
        assert_eq!(basic_constraints_ca(&not_ca.der()), expected_ext);
        let leaf = not_ca.issue_leaf(&chain.enclave, IsCa::ExplicitNoCa);
        let bundle = [chain.cabundle(), vec![not_ca.der()]].concat();
        let doc = document(&bundle, &leaf, &chain.enclave.signing);
        assert_eq!(
            verify(&chain.root, &doc).unwrap_err(),
            Error::NotACa {
                cert: CertPosition::CaBundle(2)
            },
            "{is_ca:?}"
        );

        // The same property on the root itself.
        let root = Issuer::root(P384, is_ca);
        let intermediate = root.issue("synthetic intermediate", ca(), P384);
        let leaf = intermediate.issue_leaf(&chain.enclave, IsCa::ExplicitNoCa);
        let doc = document(
            &[root.der(), intermediate.der()],
            &leaf,
            &chain.enclave.signing,
        );
        assert_eq!(
            verify(&root, &doc).unwrap_err(),
            Error::NotACa {
                cert: CertPosition::CaBundle(0)
            },
            "{is_ca:?}"
        );
    }
}

#[test]
fn a_leaf_that_is_a_ca_is_refused() {
    let chain = Chain::new();
    let leaf = chain.intermediate.issue_leaf(&chain.enclave, ca());
    assert_eq!(basic_constraints_ca(&leaf), Some(true));
    assert_eq!(
        verify(&chain.root, &chain.document_with_leaf(&leaf)).unwrap_err(),
        Error::LeafIsCa
    );
}

#[test]
fn p256_certificate_signatures_verify() {
    for (root_alg, intermediate_alg) in [(P384, P256), (P256, P256), (P256, P384)] {
        let root = Issuer::root(root_alg, ca());
        let intermediate = root.issue("synthetic intermediate", ca(), intermediate_alg);
        let enclave = EnclaveKey::generate();
        let leaf = intermediate.issue_leaf(&enclave, IsCa::ExplicitNoCa);
        // Proves the SHA-256 path is exercised: a P-256 issuer signs with ecdsa-with-SHA256.
        let leaf_alg = x509_cert::Certificate::from_der(&leaf)
            .unwrap()
            .signature_algorithm
            .oid
            .to_string();
        assert_eq!(
            leaf_alg == ECDSA_WITH_SHA256,
            intermediate_alg == P256,
            "{leaf_alg}"
        );
        let doc = document(&[root.der(), intermediate.der()], &leaf, &enclave.signing);
        verify(&root, &doc).unwrap();
    }
}

#[test]
fn a_p256_leaf_key_is_refused_for_es384() {
    let chain = Chain::new();
    let p256_leaf_key = KeyPair::generate_for(P256).unwrap();
    let leaf = chain
        .intermediate
        .issue_leaf(&p256_leaf_key, IsCa::ExplicitNoCa);
    // The chain is valid; the refusal comes before any signature check, so the
    // document's (P-384) signer is irrelevant.
    let err = verify(&chain.root, &chain.document_with_leaf(&leaf)).unwrap_err();
    assert_eq!(
        err,
        Error::UnsupportedPublicKey {
            cert: CertPosition::Leaf,
            reason: "ES384 needs a P-384 key".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "leaf certificate: unsupported public key: ES384 needs a P-384 key"
    );
}

#[test]
fn validity_is_inclusive_at_both_ends_to_the_millisecond() {
    let chain = Chain::new();
    let doc = chain.document();
    let not_before_ms = LEAF_NOT_BEFORE as u64 * 1000;
    let not_after_ms = not_before_ms + LEAF_LIFETIME.whole_milliseconds() as u64;
    // Age and skew checks off: only certificate validity decides.
    let policy = |at_ms| {
        Policy::default()
            .check_time(CheckTime::UnixMillis(at_ms))
            .max_age(None)
            .max_future_skew(std::time::Duration::from_secs(24 * 60 * 60))
    };
    for at_ms in [not_before_ms, not_after_ms] {
        verify_at(&chain.root, &doc, &policy(at_ms)).unwrap();
    }
    for at_ms in [not_before_ms - 1, not_after_ms + 1] {
        assert_eq!(
            verify_at(&chain.root, &doc, &policy(at_ms)).unwrap_err(),
            Error::CertificateNotValidAt {
                cert: CertPosition::Leaf,
                at_ms,
                not_before_ms,
                not_after_ms,
            }
        );
    }
}

#[test]
fn an_issuer_name_mismatch_under_a_valid_signature_is_refused() {
    let chain = Chain::new();
    // A certificate named "someone else" for the intermediate's own key: what rcgen
    // issues under it carries that issuer name, signed by the intermediate's key.
    let impostor_params = ca_params("someone else", ca());
    let impostor = rcgen::Issuer::from_params(&impostor_params, &chain.intermediate.key);
    // The signature is checked before the name, so `IssuerMismatch` (rather than
    // `CertificateSignature`) also shows that the signature verified.
    let leaf = leaf_params(IsCa::ExplicitNoCa)
        .signed_by(&chain.enclave, &impostor)
        .unwrap();
    assert_eq!(
        verify(&chain.root, &chain.document_with_leaf(leaf.der())).unwrap_err(),
        Error::IssuerMismatch {
            cert: CertPosition::Leaf
        }
    );
    // The same for a CA certificate in the bundle.
    let key = KeyPair::generate_for(P384).unwrap();
    let params = ca_params("below the impostor", ca());
    let below = Issuer {
        cert: params.signed_by(&key, &impostor).unwrap(),
        params,
        key,
    };
    let leaf = below.issue_leaf(&chain.enclave, IsCa::ExplicitNoCa);
    let bundle = [chain.cabundle(), vec![below.der()]].concat();
    assert_eq!(
        verify(
            &chain.root,
            &document(&bundle, &leaf, &chain.enclave.signing)
        )
        .unwrap_err(),
        Error::IssuerMismatch {
            cert: CertPosition::CaBundle(2)
        }
    );
}

#[test]
fn a_cabundle_longer_than_the_limit_is_refused() {
    // A real chain one CA longer than the limit: root, then each CA issued by the last.
    let mut cas = vec![Issuer::root(P384, ca())];
    while cas.len() <= MAX_CABUNDLE_LEN {
        let next = cas[cas.len() - 1].issue("synthetic intermediate", ca(), P384);
        cas.push(next);
    }
    let enclave = EnclaveKey::generate();
    let document_under = |cas: &[Issuer]| {
        let bundle: Vec<_> = cas.iter().map(Issuer::der).collect();
        let leaf = cas[cas.len() - 1].issue_leaf(&enclave, IsCa::ExplicitNoCa);
        document(&bundle, &leaf, &enclave.signing)
    };
    // Exactly at the limit it verifies: the length alone decides below.
    verify(&cas[0], &document_under(&cas[..MAX_CABUNDLE_LEN])).unwrap();
    assert_eq!(
        verify(&cas[0], &document_under(&cas)).unwrap_err(),
        Error::InvalidField {
            field: "cabundle",
            reason: format!("more than {MAX_CABUNDLE_LEN} certificates"),
        }
    );
}
