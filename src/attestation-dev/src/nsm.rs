//! The real Nitro Secure Module, through `/dev/nsm`.

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use crate::{AttestError, AttestationRequest, Attester, Mode};

/// The device `nsm_init` opens; named in [`AttestError::NsmUnavailable`].
const NSM_DEVICE: &str = "/dev/nsm";

/// Asks the enclave's Nitro Secure Module for attestation documents.
///
/// Holds the open `/dev/nsm` descriptor for its whole life and closes it on drop.
#[derive(Debug)]
pub struct NsmAttester {
    fd: i32,
}

impl NsmAttester {
    /// Opens `/dev/nsm`.
    ///
    /// Fails with [`AttestError::NsmUnavailable`] outside a Nitro Enclave: there is no fallback.
    pub fn open() -> Result<Self, AttestError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(AttestError::NsmUnavailable { path: NSM_DEVICE });
        }
        Ok(Self { fd })
    }
}

impl Attester for NsmAttester {
    fn mode(&self) -> Mode {
        Mode::Nsm
    }

    fn attest(&self, req: AttestationRequest<'_>) -> Result<Vec<u8>, AttestError> {
        req.validate()?;
        let request = Request::Attestation {
            user_data: Some(ByteBuf::from(req.user_data)),
            nonce: req.nonce.map(ByteBuf::from),
            public_key: Some(ByteBuf::from(req.public_key)),
        };
        // The NSM driver serialises ioctls itself, so concurrent calls on one fd are fine.
        match nsm_process_request(self.fd, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(AttestError::NsmRejected(code)),
            _ => Err(AttestError::NsmUnexpectedResponse),
        }
    }
}

impl Drop for NsmAttester {
    fn drop(&mut self) {
        nsm_exit(self.fd);
    }
}
