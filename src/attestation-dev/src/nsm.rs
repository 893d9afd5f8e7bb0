//! The real Nitro Secure Module, through `/dev/nsm`.

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
    /// Also refuses a device that anyone but root could open: tasks run under
    /// other uids, and a task holding the NSM could mint genuine documents for
    /// a key of its choosing.
    pub fn open() -> Result<Self, AttestError> {
        check_private(Path::new(NSM_DEVICE))?;
        let fd = nsm_init();
        if fd < 0 {
            return Err(AttestError::NsmUnavailable { path: NSM_DEVICE });
        }
        Ok(Self { fd })
    }
}

/// The device must belong to root and grant nothing to group or others.
fn check_private(device: &Path) -> Result<(), AttestError> {
    let meta = match std::fs::metadata(device) {
        Ok(meta) => meta,
        // Let `nsm_init` report the missing device with its own error.
        Err(_) => return Ok(()),
    };
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(AttestError::NsmExposed {
            path: NSM_DEVICE,
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_device_others_can_open_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("nsm");
        std::fs::write(&dev, b"").expect("file");
        let owned_by_root = std::fs::metadata(&dev).expect("meta").uid() == 0;
        for (mode, private) in [
            (0o600, true),
            (0o660, false),
            (0o606, false),
            (0o640, false),
        ] {
            std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let verdict = check_private(&dev);
            if private && owned_by_root {
                assert!(verdict.is_ok(), "{mode:o}: {verdict:?}");
            } else {
                assert!(
                    matches!(verdict, Err(AttestError::NsmExposed { .. })),
                    "{mode:o} accepted"
                );
            }
        }
    }
}
