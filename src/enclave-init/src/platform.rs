//! Which attestation the server gets, decided once at boot from what the
//! machine itself provides, never from the (measured, fixed) cmdline or from
//! anything the parent controls.
//!
//! - `/dev/nsm` exists: the NSM (a Nitro enclave, or QEMU's emulated NSM).
//! - no `/dev/nsm`, and the machine's ACPI tables are QEMU's (OEM ID
//!   `BOCHS `, QEMU's own): dev attestation, for the boot test, which runs the
//!   production image unchanged in QEMU's `microvm`.
//! - neither: nothing. A Nitro enclave always has an NSM, so its absence there
//!   means the driver did not load; the server is not started and the status
//!   channel says why (no silent fallback to dev attestation on Nitro).
//!
//! Why this does not weaken production: a dev attestation document is signed
//! by a throwaway root made at start and carries all-zero PCRs, so a client
//! pinned to AWS's root (the default) rejects it whoever caused it. A parent
//! cannot remove the NSM from a Nitro enclave nor change its ACPI tables
//! (the Nitro hypervisor builds both); a parent that boots the image in its own
//! QEMU gets dev mode, which it could have with any image of its own.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The DSDT as the kernel exports it.
pub const DSDT: &str = "/sys/firmware/acpi/tables/DSDT";
/// The OEM ID QEMU writes into every ACPI table it builds.
pub const QEMU_OEM_ID: &[u8; 6] = b"BOCHS ";

/// The attestation the server gets; passed to `run.sh` as `NAUTILUS_ATTESTATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    Nsm,
    Dev,
    /// No NSM on a machine that is not a QEMU test VM.
    Unavailable,
}

impl Attestation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nsm => "nsm",
            Self::Dev => "dev",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The ACPI OEM ID (bytes 10..16 of the table header) of the table at `path`.
pub fn acpi_oem_id(path: &Path) -> Option<[u8; 6]> {
    let mut header = [0u8; 16];
    File::open(path).ok()?.read_exact(&mut header).ok()?;
    let mut id = [0u8; 6];
    id.copy_from_slice(&header[10..16]);
    Some(id)
}

/// The decision described in the module docs.
pub fn attestation(nsm_device: &Path, dsdt: &Path) -> Attestation {
    if nsm_device.exists() {
        Attestation::Nsm
    } else if acpi_oem_id(dsdt).as_ref() == Some(QEMU_OEM_ID) {
        Attestation::Dev
    } else {
        Attestation::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(oem: &[u8; 6]) -> Vec<u8> {
        let mut t = b"DSDT\x00\x01\x00\x00\x01\x00".to_vec();
        t.extend_from_slice(oem);
        t.extend_from_slice(b"BXPC    ");
        t
    }

    #[test]
    fn the_nsm_wins_whatever_the_machine() {
        let dir = tempfile::tempdir().unwrap();
        let (nsm, dsdt) = (dir.path().join("nsm"), dir.path().join("DSDT"));
        std::fs::write(&nsm, b"").unwrap();
        std::fs::write(&dsdt, table(QEMU_OEM_ID)).unwrap();
        assert_eq!(attestation(&nsm, &dsdt), Attestation::Nsm);
    }

    #[test]
    fn dev_only_without_an_nsm_on_qemus_acpi_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (nsm, dsdt) = (dir.path().join("nsm"), dir.path().join("DSDT"));
        std::fs::write(&dsdt, table(QEMU_OEM_ID)).unwrap();
        assert_eq!(attestation(&nsm, &dsdt), Attestation::Dev);
        // Another vendor's tables (a Nitro enclave whose NSM driver failed),
        // a short table, or none at all: no attestation, never dev.
        std::fs::write(&dsdt, table(b"AMAZON")).unwrap();
        assert_eq!(attestation(&nsm, &dsdt), Attestation::Unavailable);
        std::fs::write(&dsdt, b"DSDT\x00\x01BOCHS").unwrap();
        assert_eq!(attestation(&nsm, &dsdt), Attestation::Unavailable);
        std::fs::remove_file(&dsdt).unwrap();
        assert_eq!(attestation(&nsm, &dsdt), Attestation::Unavailable);
    }
}
