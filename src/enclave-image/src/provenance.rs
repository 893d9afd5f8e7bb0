//! What built an image, for its metadata section (not measured): the
//! kernel's version string from its bzImage header, and the compilers named
//! in the enclave binaries' `.comment` sections (rustc, and the C compiler of
//! any C code linked in: `GCC: (Debian 12.2.0-14+deb12u1) 12.2.0`, `clang
//! version …`). Read from the bytes that go into the image, so the record
//! cannot disagree with them.

use std::path::Path;

/// Why a binary's compilers could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file: {reason}")]
    NotElf { path: String, reason: String },
}

/// Offset of the setup header's "HdrS" magic (Linux boot protocol 2.00+).
const HDRS_OFFSET: usize = 0x202;
/// Offset of `kernel_version`: a pointer to a NUL-terminated string, 0x200
/// bytes before its target.
const KERNEL_VERSION_OFFSET: usize = 0x20e;
/// Longest version string read.
const MAX_VERSION: usize = 256;

/// The kernel version string of a bzImage (`6.12.48+deb13-cloud-amd64
/// (debian-kernel@lists.debian.org) #1 SMP …`), as `file` prints it, or
/// `None` if `kernel` is not a bzImage carrying one.
pub fn bzimage_version(kernel: &[u8]) -> Option<String> {
    if kernel.get(HDRS_OFFSET..HDRS_OFFSET + 4)? != b"HdrS" {
        return None;
    }
    let pointer = kernel.get(KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2)?;
    let pointer = u16::from_le_bytes([pointer[0], pointer[1]]) as usize;
    if pointer == 0 {
        return None;
    }
    let start = pointer + 0x200;
    let text = kernel.get(start..kernel.len().min(start + MAX_VERSION))?;
    let end = text.iter().position(|&b| b == 0)?;
    let version = std::str::from_utf8(&text[..end]).ok()?.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

/// The strings in the `.comment` section of the ELF file at `path`: one per
/// compiler that contributed code, in order, without repeats.
pub fn elf_compilers(path: &Path) -> Result<Vec<String>, ProvenanceError> {
    let bytes = std::fs::read(path).map_err(|source| ProvenanceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| ProvenanceError::NotElf {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut found = Vec::new();
    for header in &elf.section_headers {
        if elf.shdr_strtab.get_at(header.sh_name) != Some(".comment") {
            continue;
        }
        let range = header.file_range().unwrap_or(0..0);
        let Some(data) = bytes.get(range) else {
            continue;
        };
        for part in data.split(|&b| b == 0) {
            let text = String::from_utf8_lossy(part).trim().to_owned();
            if !text.is_empty() && !found.contains(&text) {
                found.push(text);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A setup header laid out as the boot protocol documents it
    /// (Documentation/arch/x86/boot.rst): "HdrS" at 0x202, the version
    /// pointer at 0x20e, the string 0x200 bytes after what it points to.
    #[test]
    fn the_version_string_is_read_where_the_boot_protocol_puts_it() {
        let mut kernel = vec![0u8; 0x4000];
        kernel[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        let pointer: u16 = 0x3000;
        kernel[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2]
            .copy_from_slice(&pointer.to_le_bytes());
        let text = b"6.12.48+deb13-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        let at = pointer as usize + 0x200;
        kernel[at..at + text.len()].copy_from_slice(text);
        assert_eq!(
            bzimage_version(&kernel).as_deref(),
            Some("6.12.48+deb13-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP")
        );
        // Not a bzImage, a header without a version, a pointer past the end.
        assert_eq!(bzimage_version(b"any file works for a test build"), None);
        kernel[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2].copy_from_slice(&[0, 0]);
        assert_eq!(bzimage_version(&kernel), None);
        kernel[KERNEL_VERSION_OFFSET..KERNEL_VERSION_OFFSET + 2].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(bzimage_version(&kernel), None);
    }

    /// This test binary's own `.comment` names the rustc that built it.
    #[test]
    fn a_binary_names_the_rustc_that_built_it() {
        let me = std::env::current_exe().unwrap();
        let compilers = elf_compilers(&me).unwrap();
        let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        assert!(
            compilers.iter().any(|c| c.starts_with("rustc version ")),
            "{compilers:?}"
        );
        if let Ok(rustc) = rustc {
            // "rustc 1.95.0 (59807616e 2026-04-14)" → "rustc version 1.95.0 (…)"
            let expected = rustc.replacen("rustc ", "rustc version ", 1);
            assert!(compilers.contains(&expected), "{compilers:?} vs {rustc}");
        }
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_elf.path(), b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            elf_compilers(not_elf.path()),
            Err(ProvenanceError::NotElf { .. })
        ));
    }
}
