//! The software stand-in: AWS-format documents signed by a dev certificate chain.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use p384::ecdsa::SigningKey;
use p384::pkcs8::EncodePrivateKey;
use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P384_SHA384,
};
use time::OffsetDateTime;

use crate::{cose, AttestError, AttestationRequest, Attester, Mode};

/// How long the dev root and intermediate are valid; a dev server runs far less than this.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// AWS leaf certificates are valid for about three hours.
const LEAF_VALIDITY: Duration = Duration::from_secs(3 * 60 * 60);
/// A leaf is replaced once this old, so every document's leaf stays valid for another hour:
/// enough for a client to verify it.
const LEAF_ROTATE_AFTER: Duration = Duration::from_secs(2 * 60 * 60);

/// PCRs 0..=15, SHA-384 sized, all zero: what an enclave in debug mode reports.
const PCR_COUNT: usize = 16;
const PCR_LEN: usize = 48;

/// Every certificate's organisation: no one reading a dev chain can mistake it for AWS's.
const ORGANIZATION: &str = "nautilus development (NOT AWS, NOT an enclave)";
const ROOT_CN: &str = "nautilus-dev-root — NOT AWS";
const INTERMEDIATE_CN: &str = "nautilus-dev-intermediate — NOT AWS";

/// Issues attestation documents in the AWS format from a dev CA generated at start.
///
/// The chain is `root → intermediate → leaf`. The root's private key is dropped as soon as it
/// has signed the intermediate, so nothing else can ever chain to this root. The leaf is
/// valid for three hours and is replaced by a fresh key and certificate once it is two hours
/// old, like the NSM's short-lived leaves.
pub struct DevAttester {
    module_id: String,
    root_pem: String,
    /// `[root, intermediate]` DER, the document's `cabundle`: root first, as AWS orders it.
    cabundle: Vec<Vec<u8>>,
    /// Issues the leaves: the intermediate's name and key.
    intermediate: Issuer<'static, KeyPair>,
    leaf: Mutex<Arc<Leaf>>,
}

/// The signing certificate and its key; replaced whole, never edited in place.
struct Leaf {
    key: SigningKey,
    der: Vec<u8>,
    not_before: SystemTime,
    rotate_at: SystemTime,
}

impl DevAttester {
    /// Generates a fresh dev root CA, intermediate and leaf, all ECDSA P-384 with SHA-384.
    pub fn generate() -> Result<Self, AttestError> {
        Self::generate_at(SystemTime::now())
    }

    fn generate_at(now: SystemTime) -> Result<Self, AttestError> {
        let module_id = format!("dev-{}", hex::encode(random_bytes::<8>()));
        let start = whole_seconds(now)?;

        let root_params = ca_params(ROOT_CN, BasicConstraints::Unconstrained, start)?;
        let root_key = ca_key()?;
        let root_cert = root_params
            .self_signed(&root_key)
            .map_err(AttestError::DevCertificate)?;
        let root = Issuer::new(root_params, root_key);
        let intermediate_params =
            ca_params(INTERMEDIATE_CN, BasicConstraints::Constrained(0), start)?;
        let intermediate_key = ca_key()?;
        let intermediate_cert = intermediate_params
            .signed_by(&intermediate_key, &root)
            .map_err(AttestError::DevCertificate)?;
        drop(root);
        let intermediate = Issuer::new(intermediate_params, intermediate_key);

        let leaf = issue_leaf(&module_id, &intermediate, now)?;
        Ok(Self {
            root_pem: root_cert.pem(),
            cabundle: vec![root_cert.der().to_vec(), intermediate_cert.der().to_vec()],
            module_id,
            intermediate,
            leaf: Mutex::new(Arc::new(leaf)),
        })
    }

    /// The dev root certificate as PEM, for a client to be told to trust.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// The dev root certificate as DER; also `cabundle[0]` of every document.
    pub fn root_der(&self) -> &[u8] {
        &self.cabundle[0]
    }

    fn attest_at(
        &self,
        req: AttestationRequest<'_>,
        now: SystemTime,
    ) -> Result<Vec<u8>, AttestError> {
        req.validate()?;
        let leaf = self.leaf_at(now)?;
        let pcrs = (0..PCR_COUNT).map(|i| (i, vec![0; PCR_LEN])).collect();
        // The NSM API's own document type, so field names, order and CBOR types are AWS's.
        let document = AttestationDoc::new(
            self.module_id.clone(),
            Digest::SHA384,
            unix_millis(now)?,
            pcrs,
            leaf.der.clone(),
            self.cabundle.clone(),
            Some(req.user_data.to_vec()),
            req.nonce.map(<[u8]>::to_vec),
            Some(req.public_key.to_vec()),
        );
        let payload = serde_cbor::to_vec(&document).map_err(AttestError::Encoding)?;
        cose::sign1(&payload, &leaf.key)
    }

    /// The leaf to sign with at `now`, replacing it first if it is due or not yet valid
    /// (the clock went backwards).
    fn leaf_at(&self, now: SystemTime) -> Result<Arc<Leaf>, AttestError> {
        // The guarded value is an `Arc` swapped in one assignment: a panic elsewhere cannot
        // leave it half-updated, so a poisoned lock is still safe to use.
        let mut leaf = self.leaf.lock().unwrap_or_else(PoisonError::into_inner);
        if now < leaf.not_before || now >= leaf.rotate_at {
            *leaf = Arc::new(issue_leaf(&self.module_id, &self.intermediate, now)?);
        }
        Ok(Arc::clone(&leaf))
    }
}

impl Attester for DevAttester {
    fn mode(&self) -> Mode {
        Mode::Dev
    }

    fn attest(&self, req: AttestationRequest<'_>) -> Result<Vec<u8>, AttestError> {
        self.attest_at(req, SystemTime::now())
    }
}

impl std::fmt::Debug for DevAttester {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevAttester")
            .field("module_id", &self.module_id)
            .finish_non_exhaustive()
    }
}

/// A fresh leaf for `module_id`, valid from `now` (to the second) for [`LEAF_VALIDITY`].
///
/// The key is made with p384 (which signs the COSE payload) and handed to rcgen as PKCS#8,
/// so the certificate certifies exactly the key that signs.
fn issue_leaf(
    module_id: &str,
    issuer: &Issuer<'_, KeyPair>,
    now: SystemTime,
) -> Result<Leaf, AttestError> {
    let key = SigningKey::random(&mut OsRng);
    let pkcs8 = key.to_pkcs8_der().map_err(AttestError::DevKey)?;
    let cert_key = KeyPair::try_from(pkcs8.as_bytes()).map_err(AttestError::DevCertificate)?;

    let not_before = whole_seconds(now)?;
    let mut params = params(&format!("{module_id}.nautilus-dev — NOT AWS"), not_before)?;
    // basicConstraints with `cA` absent (FALSE by default), critical: what AWS leaves carry.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, not_before, LEAF_VALIDITY)?;
    let cert = params
        .signed_by(&cert_key, issuer)
        .map_err(AttestError::DevCertificate)?;
    Ok(Leaf {
        key,
        der: cert.der().to_vec(),
        not_before,
        rotate_at: not_before + LEAF_ROTATE_AFTER,
    })
}

/// A CA key; only rcgen ever signs with it, so rcgen generates it.
fn ca_key() -> Result<KeyPair, AttestError> {
    KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(AttestError::DevCertificate)
}

fn ca_params(
    common_name: &str,
    path_len: BasicConstraints,
    not_before: SystemTime,
) -> Result<CertificateParams, AttestError> {
    let mut params = params(common_name, not_before)?;
    params.is_ca = IsCa::Ca(path_len);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, not_before, CA_VALIDITY)?;
    Ok(params)
}

/// Parameters shared by every certificate in the chain: a dev name and a random serial.
fn params(common_name: &str, not_before: SystemTime) -> Result<CertificateParams, AttestError> {
    let mut params = CertificateParams::default();
    // Replaces rcgen's default subject ("rcgen self signed cert").
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    // RFC 5280: a positive serial of at most 20 octets.
    let mut serial = random_bytes::<20>();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = offset_date_time(not_before)?;
    Ok(params)
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    validity: Duration,
) -> Result<(), AttestError> {
    let not_after = not_before.checked_add(validity).ok_or(AttestError::Clock)?;
    params.not_after = offset_date_time(not_after)?;
    Ok(())
}

/// X.509 validity has one-second resolution; truncating keeps `not_before <= now`.
fn whole_seconds(t: SystemTime) -> Result<SystemTime, AttestError> {
    let since_epoch = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestError::Clock)?;
    Ok(UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs()))
}

fn offset_date_time(t: SystemTime) -> Result<OffsetDateTime, AttestError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestError::Clock)?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| AttestError::Clock)?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| AttestError::Clock)
}

fn unix_millis(t: SystemTime) -> Result<u64, AttestError> {
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestError::Clock)?
        .as_millis();
    u64::try_from(millis).map_err(|_| AttestError::Clock)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_cert::der::Decode;

    const REQUEST: AttestationRequest<'static> = AttestationRequest {
        public_key: &[2; 33],
        user_data: b"manifest digest",
        nonce: None,
    };

    /// The `certificate` field of a document's payload.
    fn leaf_of(document: &[u8]) -> Vec<u8> {
        let (_, _, payload, _): (
            serde_bytes::ByteBuf,
            serde_cbor::Value,
            serde_bytes::ByteBuf,
            serde_bytes::ByteBuf,
        ) = serde_cbor::from_slice(document).unwrap();
        AttestationDoc::from_binary(&payload)
            .unwrap()
            .certificate
            .into_vec()
    }

    /// The leaf certificate's validity as `(not_before, not_after)`.
    fn validity(der: &[u8]) -> (SystemTime, SystemTime) {
        let cert = x509_cert::Certificate::from_der(der).unwrap();
        let validity = cert.tbs_certificate.validity;
        (
            validity.not_before.to_system_time(),
            validity.not_after.to_system_time(),
        )
    }

    fn current_leaf(attester: &DevAttester) -> Arc<Leaf> {
        Arc::clone(&attester.leaf.lock().unwrap())
    }

    #[test]
    fn leaf_is_kept_until_two_hours_old_then_replaced() {
        let start = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let attester = DevAttester::generate_at(start).unwrap();
        let first = current_leaf(&attester);
        assert_eq!(validity(&first.der), (start, start + LEAF_VALIDITY));

        let almost = start + LEAF_ROTATE_AFTER - Duration::from_secs(1);
        let document = attester.attest_at(REQUEST, almost).unwrap();
        assert_eq!(
            leaf_of(&document),
            first.der,
            "a leaf younger than 2 h is reused"
        );

        let due = start + LEAF_ROTATE_AFTER;
        let document = attester.attest_at(REQUEST, due).unwrap();
        let second = current_leaf(&attester);
        assert_ne!(second.der, first.der, "a 2 h old leaf is replaced");
        assert_ne!(second.key.verifying_key(), first.key.verifying_key());
        assert_eq!(leaf_of(&document), second.der);
        assert_eq!(validity(&second.der), (due, due + LEAF_VALIDITY));
    }

    #[test]
    fn leaf_is_replaced_when_the_clock_goes_back() {
        let start = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let attester = DevAttester::generate_at(start).unwrap();
        let first = current_leaf(&attester);
        let earlier = start - Duration::from_secs(10);
        let document = attester.attest_at(REQUEST, earlier).unwrap();
        let second = current_leaf(&attester);
        assert_ne!(second.der, first.der);
        assert_eq!(validity(&second.der).0, earlier);
        assert_eq!(leaf_of(&document), second.der);
    }
}
