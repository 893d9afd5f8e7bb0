//! The Enclave Image File (EIF) format, version 4, as
//! `aws-nitro-enclaves-image-format` defines it, and the PCRs AWS measures.
//!
//! # Layout (all integers big-endian)
//!
//! - header, 548 bytes: magic `.eif`, `u16` version (4), `u16` flags (0 on
//!   x86_64), `u64` default memory (1 GiB), `u64` default CPUs (2), `u16`
//!   reserved, `u16` section count, 32 × `u64` section offsets, 32 × `u64`
//!   section sizes, `u32` unused, `u32` CRC32;
//! - sections, each a 12-byte section header (`u16` type: 1 kernel, 2 cmdline,
//!   3 ramdisk, 4 signature, 5 metadata; `u16` flags; `u64` size) followed by
//!   its data, in the order kernel, cmdline (no trailing NUL), metadata
//!   (JSON), ramdisks.
//!
//! The CRC32 (ISO-HDLC, as zlib's) covers the header without its CRC field,
//! then every section header and section data in file order.
//!
//! # PCRs
//!
//! `PCRn = SHA384(48 zero bytes ‖ SHA384(measured bytes))` (one TPM-style
//! extend of a zero register), where the measured bytes are, in file order:
//! - PCR0: kernel ‖ cmdline ‖ every ramdisk;
//! - PCR1: kernel ‖ cmdline ‖ the first ramdisk;
//! - PCR2: every ramdisk after the first.
//!
//! Metadata and signature sections are not measured into PCR0–2.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha384};

pub const MAGIC: [u8; 4] = *b".eif";
pub const VERSION: u16 = 4;
pub const MAX_SECTIONS: usize = 32;
pub const HEADER_SIZE: u64 = 548;
pub const SECTION_HEADER_SIZE: u64 = 12;
/// What AWS's builder writes as default memory and CPUs.
pub const DEFAULT_MEM: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_CPUS: u64 = 2;
/// Largest cmdline accepted (the kernel's own limit on x86 is 2 KiB).
pub const MAX_CMDLINE_BYTES: usize = 2048;
/// Largest metadata section read into memory.
pub const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// Section types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SectionType {
    Kernel,
    Cmdline,
    Ramdisk,
    Signature,
    Metadata,
}

impl SectionType {
    pub fn code(self) -> u16 {
        match self {
            SectionType::Kernel => 1,
            SectionType::Cmdline => 2,
            SectionType::Ramdisk => 3,
            SectionType::Signature => 4,
            SectionType::Metadata => 5,
        }
    }
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => SectionType::Kernel,
            2 => SectionType::Cmdline,
            3 => SectionType::Ramdisk,
            4 => SectionType::Signature,
            5 => SectionType::Metadata,
            _ => return None,
        })
    }
}

/// Why an EIF cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EifError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not an EIF: {0}")]
    Malformed(String),
    #[error("header CRC32 {stored:08x} does not match the content's {computed:08x}")]
    Crc { stored: u32, computed: u32 },
    #[error("cmdline must be at most {MAX_CMDLINE_BYTES} bytes without NUL bytes")]
    BadCmdline,
    #[error("an EIF holds at most {} ramdisks and at least one", MAX_SECTIONS - 3)]
    RamdiskCount,
    #[error("build time {0} cannot be formatted")]
    BadTime(i64),
}

fn malformed(msg: impl Into<String>) -> EifError {
    EifError::Malformed(msg.into())
}

/// PCR0, PCR1 and PCR2 of an image (48 bytes each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcrs {
    pub pcr0: [u8; 48],
    pub pcr1: [u8; 48],
    pub pcr2: [u8; 48],
}

impl Pcrs {
    /// nitro-cli's measurements JSON (keys as `nitro-cli build-enclave` and
    /// `describe-eif` print them), pretty-printed, with a final newline.
    pub fn to_measurements_json(&self) -> String {
        let value = serde_json::json!({
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": hex::encode(self.pcr0),
            "PCR1": hex::encode(self.pcr1),
            "PCR2": hex::encode(self.pcr2),
        });
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Streams measured bytes into the three PCR registers.
#[derive(Clone, Default)]
pub struct PcrHasher {
    image: Sha384,
    bootstrap: Sha384,
    app: Sha384,
    ramdisks_seen: usize,
}

impl PcrHasher {
    /// Kernel or cmdline bytes: PCR0 and PCR1.
    pub fn boot(&mut self, bytes: &[u8]) {
        self.image.update(bytes);
        self.bootstrap.update(bytes);
    }
    /// Bytes of the current ramdisk (call [`PcrHasher::next_ramdisk`] before each).
    pub fn ramdisk(&mut self, bytes: &[u8]) {
        self.image.update(bytes);
        if self.ramdisks_seen <= 1 {
            self.bootstrap.update(bytes);
        } else {
            self.app.update(bytes);
        }
    }
    pub fn next_ramdisk(&mut self) {
        self.ramdisks_seen += 1;
    }
    pub fn finish(self) -> Pcrs {
        fn extend(hasher: Sha384) -> [u8; 48] {
            let mut register = Sha384::new();
            register.update([0u8; 48]);
            register.update(hasher.finalize());
            register.finalize().into()
        }
        Pcrs {
            pcr0: extend(self.image),
            pcr1: extend(self.bootstrap),
            pcr2: extend(self.app),
        }
    }
}

/// The metadata section (`EifIdentityInfo` of the image-format crate).
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    #[serde(rename = "ImageName")]
    pub image_name: String,
    #[serde(rename = "ImageVersion")]
    pub image_version: String,
    #[serde(rename = "BuildMetadata")]
    pub build: BuildMetadata,
    #[serde(rename = "DockerInfo")]
    pub docker_info: serde_json::Value,
    #[serde(rename = "CustomMetadata")]
    pub custom: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildMetadata {
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    #[serde(rename = "OperatingSystem")]
    pub operating_system: String,
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
}

impl Metadata {
    /// Metadata with the build time fixed at `epoch` (`SOURCE_DATE_EPOCH`), RFC 3339.
    pub fn new(
        image_name: &str,
        image_version: &str,
        kernel_version: &str,
        epoch: i64,
    ) -> Result<Self, EifError> {
        let build_time = time::OffsetDateTime::from_unix_timestamp(epoch)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .ok_or(EifError::BadTime(epoch))?;
        Ok(Metadata {
            image_name: image_name.to_owned(),
            image_version: image_version.to_owned(),
            build: BuildMetadata {
                build_time,
                build_tool: env!("CARGO_PKG_NAME").to_owned(),
                build_tool_version: env!("CARGO_PKG_VERSION").to_owned(),
                operating_system: "Linux".to_owned(),
                kernel_version: kernel_version.to_owned(),
            },
            docker_info: serde_json::Value::Null,
            custom: serde_json::json!({}),
        })
    }

    /// Records the compilers that built the image's binaries (their
    /// `.comment` strings) as `CustomMetadata.Toolchain`.
    pub fn with_toolchain(mut self, compilers: Vec<String>) -> Self {
        if !compilers.is_empty() {
            self.custom = serde_json::json!({ "Toolchain": compilers });
        }
        self
    }
}

/// Writes an EIF of `kernel`, `cmdline`, `metadata` and the ramdisk files, in
/// that order, to `out`; returns its PCRs. Two passes over the inputs: one
/// for the CRC and PCRs (the header comes first), one to copy.
pub fn write_eif<W: Write>(
    kernel: &Path,
    cmdline: &str,
    ramdisks: &[&Path],
    metadata: &Metadata,
    mut out: W,
) -> Result<Pcrs, EifError> {
    if cmdline.len() > MAX_CMDLINE_BYTES || cmdline.contains('\0') {
        return Err(EifError::BadCmdline);
    }
    if ramdisks.is_empty() || ramdisks.len() > MAX_SECTIONS - 3 {
        return Err(EifError::RamdiskCount);
    }
    let metadata = serde_json::to_vec(metadata).map_err(|e| malformed(e.to_string()))?;
    let mut sections: Vec<(SectionType, Source)> = vec![
        (SectionType::Kernel, Source::File(kernel)),
        (SectionType::Cmdline, Source::Bytes(cmdline.as_bytes())),
        (SectionType::Metadata, Source::Bytes(&metadata)),
    ];
    sections.extend(
        ramdisks
            .iter()
            .map(|r| (SectionType::Ramdisk, Source::File(r))),
    );

    let mut sizes = [0u64; MAX_SECTIONS];
    let mut offsets = [0u64; MAX_SECTIONS];
    let mut pos = HEADER_SIZE;
    for (i, (_, source)) in sections.iter().enumerate() {
        sizes[i] = source.len()?;
        offsets[i] = pos;
        pos += SECTION_HEADER_SIZE + sizes[i];
    }
    let count = sections.len() as u16;
    let header_without_crc = header_bytes(count, &offsets, &sizes);

    let mut crc = crc32fast::Hasher::new();
    crc.update(&header_without_crc);
    let mut pcrs = PcrHasher::default();
    for (i, (kind, source)) in sections.iter().enumerate() {
        crc.update(&section_header(*kind, sizes[i]));
        if *kind == SectionType::Ramdisk {
            pcrs.next_ramdisk();
        }
        source.stream(sizes[i], |chunk| {
            crc.update(chunk);
            match kind {
                SectionType::Kernel | SectionType::Cmdline => pcrs.boot(chunk),
                SectionType::Ramdisk => pcrs.ramdisk(chunk),
                _ => {}
            }
        })?;
    }
    out.write_all(&header_without_crc)?;
    out.write_all(&crc.finalize().to_be_bytes())?;
    for (i, (kind, source)) in sections.iter().enumerate() {
        out.write_all(&section_header(*kind, sizes[i]))?;
        let mut failed = None;
        source.stream(sizes[i], |chunk| {
            if failed.is_none() {
                failed = out.write_all(chunk).err();
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
    }
    out.flush()?;
    Ok(pcrs.finish())
}

enum Source<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    fn len(&self) -> io::Result<u64> {
        match self {
            Source::File(path) => Ok(std::fs::metadata(path)?.len()),
            Source::Bytes(bytes) => Ok(bytes.len() as u64),
        }
    }
    /// Feeds exactly `len` bytes to `f`; a file that changed size is an error.
    fn stream(&self, len: u64, mut f: impl FnMut(&[u8])) -> Result<(), EifError> {
        match self {
            Source::Bytes(bytes) => f(bytes),
            Source::File(path) => {
                let file = File::open(path)?;
                let seen = stream_exact(file, len, &mut f)?;
                if seen != len {
                    return Err(malformed(format!(
                        "{} changed size while read",
                        path.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Reads at most `len` bytes (and one more, to notice growth) in chunks.
fn stream_exact(reader: impl Read, len: u64, f: &mut impl FnMut(&[u8])) -> io::Result<u64> {
    let mut reader = reader.take(len + 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(seen);
        }
        seen += n as u64;
        f(&buf[..n]);
    }
}

fn header_bytes(count: u16, offsets: &[u64; MAX_SECTIONS], sizes: &[u64; MAX_SECTIONS]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_SIZE as usize);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&DEFAULT_MEM.to_be_bytes());
    h.extend_from_slice(&DEFAULT_CPUS.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&count.to_be_bytes());
    for o in offsets {
        h.extend_from_slice(&o.to_be_bytes());
    }
    for s in sizes {
        h.extend_from_slice(&s.to_be_bytes());
    }
    h.extend_from_slice(&0u32.to_be_bytes());
    h
}

fn section_header(kind: SectionType, size: u64) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..2].copy_from_slice(&kind.code().to_be_bytes());
    h[4..].copy_from_slice(&size.to_be_bytes());
    h
}

/// A parsed and checked EIF (contents are not kept).
#[derive(Debug, Clone, Serialize)]
pub struct EifInfo {
    pub version: u16,
    pub flags: u16,
    pub default_mem: u64,
    pub default_cpus: u64,
    pub crc32: u32,
    pub sections: Vec<SectionInfo>,
    /// The cmdline section as text.
    pub cmdline: String,
    /// The metadata section as JSON, when it is JSON.
    pub metadata: Option<serde_json::Value>,
    #[serde(skip)]
    pub pcrs: Pcrs,
}

#[derive(Debug, Clone, Serialize)]
pub struct SectionInfo {
    pub kind: SectionType,
    pub flags: u16,
    pub offset: u64,
    pub size: u64,
}

/// Receives each section's index, header and data, in chunks.
pub type SectionSink<'a> = dyn FnMut(usize, &SectionInfo, &[u8]) -> io::Result<()> + 'a;

/// Reads and checks the EIF at `path`: magic, version, section table against
/// the file and each section header, the CRC32; computes the PCRs. When
/// `sink` is given it receives every section's index, header and data, in
/// chunks (used by [`extract`]).
pub fn read_eif(path: &Path, mut sink: Option<&mut SectionSink<'_>>) -> Result<EifInfo, EifError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut header = [0u8; HEADER_SIZE as usize];
    file.read_exact(&mut header)
        .map_err(|_| malformed("shorter than the 548-byte header"))?;
    if header[..4] != MAGIC {
        return Err(malformed("bad magic (expected \".eif\")"));
    }
    let u16_at = |o: usize| u16::from_be_bytes([header[o], header[o + 1]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[o..o + 8]);
        u64::from_be_bytes(b)
    };
    let version = u16_at(4);
    if version == 0 || version > VERSION {
        return Err(malformed(format!("unsupported version {version}")));
    }
    let count = usize::from(u16_at(26));
    if count == 0 || count > MAX_SECTIONS {
        return Err(malformed(format!(
            "section count {count} is not within 1..=32"
        )));
    }
    let stored_crc = u32::from_be_bytes([header[544], header[545], header[546], header[547]]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..544]);
    let mut pcrs = PcrHasher::default();
    let mut sections = Vec::with_capacity(count);
    let mut cmdline = Vec::new();
    let mut metadata = Vec::new();
    let mut expected_offset = HEADER_SIZE;
    for i in 0..count {
        let offset = u64_at(28 + 8 * i);
        let size = u64_at(28 + 8 * MAX_SECTIONS + 8 * i);
        // Sections follow one another; anything else (overlap, gaps, past the
        // end) is refused rather than interpreted.
        if offset != expected_offset {
            return Err(malformed(format!(
                "section {i} at offset {offset}, expected {expected_offset}"
            )));
        }
        let end = offset
            .checked_add(SECTION_HEADER_SIZE)
            .and_then(|o| o.checked_add(size))
            .filter(|end| *end <= file_len)
            .ok_or_else(|| malformed(format!("section {i} runs past the end of the file")))?;
        expected_offset = end;
        file.seek(SeekFrom::Start(offset))?;
        let mut sh = [0u8; 12];
        file.read_exact(&mut sh)?;
        let code = u16::from_be_bytes([sh[0], sh[1]]);
        let kind = SectionType::from_code(code)
            .ok_or_else(|| malformed(format!("section {i} has unknown type {code}")))?;
        let mut sb = [0u8; 8];
        sb.copy_from_slice(&sh[4..]);
        if u64::from_be_bytes(sb) != size {
            return Err(malformed(format!(
                "section {i}'s own size differs from the header's"
            )));
        }
        let info = SectionInfo {
            kind,
            flags: u16::from_be_bytes([sh[2], sh[3]]),
            offset,
            size,
        };
        crc.update(&sh);
        if kind == SectionType::Ramdisk {
            pcrs.next_ramdisk();
        }
        if kind == SectionType::Cmdline && size > MAX_CMDLINE_BYTES as u64 {
            return Err(malformed("cmdline section too large"));
        }
        let mut sink_err = None;
        // Exactly this section: the next one starts right after it.
        let seen = stream_exact((&mut file).take(size), size, &mut |chunk: &[u8]| {
            crc.update(chunk);
            match kind {
                SectionType::Kernel => pcrs.boot(chunk),
                SectionType::Cmdline => {
                    pcrs.boot(chunk);
                    cmdline.extend_from_slice(chunk);
                }
                SectionType::Ramdisk => pcrs.ramdisk(chunk),
                SectionType::Metadata if size <= MAX_METADATA_BYTES => {
                    metadata.extend_from_slice(chunk)
                }
                _ => {}
            }
            if let (Some(sink), None) = (sink.as_mut(), &sink_err) {
                sink_err = sink(i, &info, chunk).err();
            }
        })?;
        if let Some(e) = sink_err {
            return Err(e.into());
        }
        if seen < size {
            return Err(malformed(format!("section {i} is truncated")));
        }
        sections.push(info);
    }
    if expected_offset != file_len {
        return Err(malformed(format!(
            "{} bytes after the last section",
            file_len - expected_offset
        )));
    }
    let computed = crc.finalize();
    if computed != stored_crc {
        return Err(EifError::Crc {
            stored: stored_crc,
            computed,
        });
    }
    for kind in [
        SectionType::Kernel,
        SectionType::Cmdline,
        SectionType::Ramdisk,
    ] {
        if !sections.iter().any(|s| s.kind == kind) {
            return Err(malformed(format!("no {kind:?} section")));
        }
    }
    Ok(EifInfo {
        version,
        flags: u16_at(6),
        default_mem: u64_at(8),
        default_cpus: u64_at(16),
        crc32: stored_crc,
        sections,
        cmdline: String::from_utf8_lossy(&cmdline).into_owned(),
        metadata: serde_json::from_slice(&metadata).ok(),
        pcrs: pcrs.finish(),
    })
}

/// Writes each section of the EIF at `eif` into `dir`: `kernel`, `cmdline`,
/// `ramdisk-0`, `ramdisk-1`, … (and `metadata.json`, `signature` when
/// present). The whole file is checked first, so a corrupt image writes
/// nothing. Returns the parsed info and the paths written, in section order.
pub fn extract(eif: &Path, dir: &Path) -> Result<(EifInfo, Vec<std::path::PathBuf>), EifError> {
    // Check first, so a corrupt image writes nothing.
    let info = read_eif(eif, None)?;
    std::fs::create_dir_all(dir)?;
    let mut names = Vec::new();
    let mut ramdisk = 0;
    for section in &info.sections {
        let name = match section.kind {
            SectionType::Kernel => "kernel".to_owned(),
            SectionType::Cmdline => "cmdline".to_owned(),
            SectionType::Metadata => "metadata.json".to_owned(),
            SectionType::Signature => "signature".to_owned(),
            SectionType::Ramdisk => {
                ramdisk += 1;
                format!("ramdisk-{}", ramdisk - 1)
            }
        };
        names.push(dir.join(name));
    }
    let mut files: Vec<Option<File>> = names.iter().map(|_| None).collect();
    let mut sink = |i: usize, _: &SectionInfo, chunk: &[u8]| -> io::Result<()> {
        if files[i].is_none() {
            files[i] = Some(File::create(&names[i])?);
        }
        match files[i].as_mut() {
            Some(file) => file.write_all(chunk),
            None => Ok(()),
        }
    };
    read_eif(eif, Some(&mut sink))?;
    // Empty sections got no chunk: create them too.
    for name in &names {
        if !name.exists() {
            File::create(name)?;
        }
    }
    Ok((info, names))
}
