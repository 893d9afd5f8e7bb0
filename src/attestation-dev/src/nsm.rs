//! The real Nitro Secure Module, through `/dev/nsm`.
//!
//! The driver (mainline `drivers/misc/nsm.c` since Linux 6.8, and AWS's
//! out-of-tree one before it) registers the device with mode 0666, so devtmpfs
//! creates it open to every user. A task holding it could have documents
//! attest keys of its choosing, so [`NsmAttester::open`] makes the node
//! root-only itself (when it runs as root) and refuses a node it cannot make
//! private.
//!
//! The request goes through our own `ioctl` rather than the crate's
//! `driver::nsm_process_request`: that function turns every `ioctl` failure
//! into `ErrorCode::InternalError`, which hides the two an operator needs to
//! tell apart: `ENOTTY` (the node is not an NSM) and `ETIMEDOUT` (the NSM did
//! not answer within the driver's 120 s). The request and response types and
//! their CBOR are still the crate's.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use serde_bytes::ByteBuf;

use crate::{AttestError, AttestationRequest, Attester, Mode};

/// The device the driver creates. Fixed: no deployment setting can point the
/// server at another node.
const NSM_DEVICE: &str = "/dev/nsm";

/// Largest request and response the driver handles (`NSM_REQUEST_MAX_SIZE`,
/// `NSM_RESPONSE_MAX_SIZE`); a larger request fails with `EMSGSIZE`, a larger
/// response would be cut to the buffer.
const NSM_REQUEST_MAX: usize = 0x1000;
const NSM_RESPONSE_MAX: usize = 0x3000;

/// `struct nsm_raw` of `include/uapi/linux/nsm.h`: two `{u64 addr; u64 len}`
/// buffers; the driver writes the response length back into `response_len`.
#[repr(C)]
struct NsmRaw {
    request_addr: u64,
    request_len: u64,
    response_addr: u64,
    response_len: u64,
}

/// `NSM_IOCTL_RAW` = `_IOWR(0x0A, 0, struct nsm_raw)`.
const NSM_IOCTL_RAW: u64 = (3 << 30) | ((std::mem::size_of::<NsmRaw>() as u64) << 16) | (0x0A << 8);

/// Asks the enclave's Nitro Secure Module for attestation documents.
///
/// Holds the open `/dev/nsm` for its whole life and closes it on drop.
#[derive(Debug)]
pub struct NsmAttester {
    device: File,
}

/// What [`NsmAttester::open`] had to change to make the device root-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restricted {
    /// Owner uid before.
    pub uid: u32,
    /// Owner gid before.
    pub gid: u32,
    /// Permission bits before, e.g. `0o666`.
    pub mode: u32,
}

impl NsmAttester {
    /// Opens `/dev/nsm`, first making it root-only (owner root, mode 0600) if
    /// it is not and this process is root; says in the second value what it
    /// changed, so the caller can log it.
    ///
    /// Fails with [`AttestError::NsmUnavailable`] outside a Nitro Enclave (there is no
    /// fallback), and with [`AttestError::NsmExposed`] when the device stays open to
    /// other users: tasks run under other uids, and a task holding the NSM could mint
    /// genuine documents for a key of its choosing.
    pub fn open() -> Result<(Self, Option<Restricted>), AttestError> {
        open_device(Path::new(NSM_DEVICE), is_root())
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn open_device(path: &Path, root: bool) -> Result<(NsmAttester, Option<Restricted>), AttestError> {
    let unavailable = |error| AttestError::NsmUnavailable {
        path: path.display().to_string(),
        error,
    };
    // The node itself, not what a symlink points at.
    let before = std::fs::symlink_metadata(path).map_err(unavailable)?;
    let restricted = if is_private(&before) {
        None
    } else {
        restrict(path, &before, root)?;
        Some(Restricted {
            uid: before.uid(),
            gid: before.gid(),
            mode: before.mode() & 0o7777,
        })
    };
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(unavailable)?;
    // Checked again on what is now open: only this can be attested with.
    let after = device.metadata().map_err(unavailable)?;
    if !is_private(&after) {
        return Err(exposed(path, &after, root, None));
    }
    Ok((NsmAttester { device }, restricted))
}

/// Owned by root and granting nothing to group or others.
fn is_private(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.mode() & 0o077 == 0
}

/// Makes the node root:root 0600, or says why it could not and what to do.
fn restrict(path: &Path, before: &std::fs::Metadata, root: bool) -> Result<(), AttestError> {
    if !root {
        return Err(exposed(path, before, root, None));
    }
    std::os::unix::fs::lchown(path, Some(0), Some(0))
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| exposed(path, before, root, Some(e)))
}

fn exposed(
    path: &Path,
    meta: &std::fs::Metadata,
    root: bool,
    error: Option<std::io::Error>,
) -> AttestError {
    let fix = "have the enclave's init run `chown root:root /dev/nsm && chmod 0600 /dev/nsm` \
               before starting the server";
    let reason = match (root, error) {
        (false, _) => format!(
            "the server is not root, so it cannot make it root-only; start it as root or {fix}"
        ),
        (true, Some(e)) => format!("making it root-only failed ({e}); {fix}"),
        (true, None) => format!("it stayed open after being made root-only; {fix}"),
    };
    AttestError::NsmExposed {
        path: path.display().to_string(),
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
        reason,
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
        // The driver serialises requests under one mutex, so concurrent calls
        // on one descriptor are fine.
        match self.process(&request)? {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(AttestError::NsmRejected(code)),
            _ => Err(AttestError::NsmUnexpectedResponse),
        }
    }
}

impl NsmAttester {
    /// One request/response round trip through the driver.
    fn process(&self, request: &Request) -> Result<Response, AttestError> {
        let encoded = serde_cbor::to_vec(request).map_err(AttestError::Encoding)?;
        if encoded.len() > NSM_REQUEST_MAX {
            // validate() keeps every field small enough that this cannot happen.
            return Err(AttestError::NsmIo(std::io::Error::from_raw_os_error(
                libc::EMSGSIZE,
            )));
        }
        let mut response = vec![0u8; NSM_RESPONSE_MAX];
        let mut raw = NsmRaw {
            request_addr: encoded.as_ptr() as u64,
            request_len: encoded.len() as u64,
            response_addr: response.as_mut_ptr() as u64,
            response_len: response.len() as u64,
        };
        // SAFETY: both buffers outlive the call and their lengths are theirs;
        // the driver reads `request_len` bytes, writes at most `response_len`
        // bytes and then the new `response_len` into `raw`, which is ours.
        let rc = unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                // The request type differs between C libraries: c_ulong on glibc, c_int on musl (the image).
                NSM_IOCTL_RAW as libc::Ioctl,
                &mut raw as *mut NsmRaw,
            )
        };
        if rc != 0 {
            return Err(AttestError::NsmIo(std::io::Error::last_os_error()));
        }
        let len = usize::try_from(raw.response_len)
            .unwrap_or(usize::MAX)
            .min(response.len());
        serde_cbor::from_slice(&response[..len]).map_err(AttestError::Encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_the_drivers() {
        // _IOWR(0x0A, 0, 32 bytes), as nitro-cli's and the crate's drivers compute it.
        assert_eq!(NSM_IOCTL_RAW, 0xC020_0A00);
    }

    fn node(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("nsm");
        std::fs::write(&dev, b"").expect("file");
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, dev)
    }

    #[test]
    fn not_root_refuses_a_device_others_can_open_and_says_what_to_do() {
        for mode in [0o666, 0o660, 0o606, 0o640] {
            let (_dir, dev) = node(mode);
            match open_device(&dev, false) {
                Err(e @ AttestError::NsmExposed { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("not root") && msg.contains("chmod 0600"),
                        "{msg}"
                    );
                    assert!(msg.contains(&format!("mode {mode:o}")), "{msg}");
                }
                other => panic!("{mode:o}: expected NsmExposed, got {other:?}"),
            }
            // Nothing was changed.
            let now = std::fs::metadata(&dev).expect("meta").mode() & 0o777;
            assert_eq!(now, mode);
        }
    }

    #[test]
    fn as_root_an_open_device_is_made_root_only() {
        if !is_root() {
            skip_report::skipped("as_root_an_open_device_is_made_root_only", "needs root");
            return;
        }
        let (_dir, dev) = node(0o666);
        std::os::unix::fs::lchown(&dev, Some(1), Some(1)).expect("chown");
        let (_nsm, restricted) = open_device(&dev, true).expect("opened");
        assert_eq!(
            restricted,
            Some(Restricted {
                uid: 1,
                gid: 1,
                mode: 0o666
            })
        );
        let meta = std::fs::metadata(&dev).expect("meta");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o600)
        );
        // Already private: nothing to report.
        let (_nsm, again) = open_device(&dev, true).expect("opened");
        assert_eq!(again, None);
    }

    #[test]
    fn a_missing_device_is_unavailable_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open_device(&dir.path().join("nsm"), true).expect_err("no device");
        assert!(matches!(err, AttestError::NsmUnavailable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("No such file"), "{msg}");
        assert!(msg.contains("not a Nitro Enclave"), "{msg}");
    }

    #[test]
    fn a_node_that_is_not_an_nsm_fails_the_request_with_the_errno() {
        // A regular file accepts open() but not the NSM ioctl: ENOTTY, which
        // the crate's own wrapper would have reported as InternalError.
        let (_dir, dev) = node(0o600);
        let attester = NsmAttester {
            device: File::options()
                .read(true)
                .write(true)
                .open(&dev)
                .expect("open"),
        };
        let err = attester
            .attest(AttestationRequest {
                public_key: &[2; 33],
                user_data: b"",
                nonce: None,
            })
            .expect_err("not an NSM");
        assert!(
            matches!(&err, AttestError::NsmIo(e) if e.raw_os_error() == Some(libc::ENOTTY)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("not a Nitro Secure Module"),
            "{err}"
        );
    }
}
