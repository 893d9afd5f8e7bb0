//! The PCR formula and the EIF layout checked against AWS's own code without
//! its heavy dependency: `fixtures/aws-vector/small.eif` (a 4 KiB stand-in
//! kernel, a cmdline and two small ramdisks, written by `enclave-image eif`)
//! was read once by AWS's `aws-nitro-enclaves-image-format` crate (=0.8.1,
//! `EifReader`: CRC check and measurements), which also rebuilt it
//! byte-identically with its `EifBuilder`; its output is
//! `fixtures/aws-vector/aws-measurements.json`. `make eif-aws-vector`
//! regenerates that file; `make eif-crosscheck` does the same for out/nitro.eif.

use std::path::{Path, PathBuf};

use enclave_image::eif;

fn vector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws-vector")
}

#[test]
fn our_reader_measures_the_vector_as_aws_does() {
    let aws: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(vector().join("aws-measurements.json")).unwrap(),
    )
    .unwrap();
    let info = eif::read_eif(&vector().join("small.eif"), None).unwrap();
    assert_eq!(aws["PCR0"], hex::encode(info.pcrs.pcr0));
    assert_eq!(aws["PCR1"], hex::encode(info.pcrs.pcr1));
    assert_eq!(aws["PCR2"], hex::encode(info.pcrs.pcr2));
    assert_eq!(aws["crc32"], format!("{:08x}", info.crc32));
    // Not a vector of nothing: two ramdisks, and PCR1 ≠ PCR0.
    let ramdisks = info
        .sections
        .iter()
        .filter(|s| matches!(s.kind, eif::SectionType::Ramdisk))
        .count();
    assert_eq!(ramdisks, 2);
    assert_ne!(aws["PCR0"], aws["PCR1"]);
}

/// Our writer, given the vector's sections back, writes the vector's bytes:
/// the bytes AWS's `EifBuilder` wrote from the same sections.
#[test]
fn our_writer_rebuilds_the_vector_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (info, _) = eif::extract(&vector().join("small.eif"), dir.path()).unwrap();
    let at = |name: &str| dir.path().join(name);
    let metadata = info.metadata.expect("the vector has JSON metadata");
    let build = &metadata["BuildMetadata"];
    let kernel_version = build["KernelVersion"].as_str().unwrap();
    let m = eif::Metadata::new("nautilus", "0.1.0", kernel_version, 0).unwrap();
    let mut out = Vec::new();
    let cmdline = std::fs::read_to_string(at("cmdline")).unwrap();
    eif::write_eif(
        &at("kernel"),
        &cmdline,
        &[&at("ramdisk-0"), &at("ramdisk-1")],
        &m,
        &mut out,
    )
    .unwrap();
    assert!(out == std::fs::read(vector().join("small.eif")).unwrap());
}
