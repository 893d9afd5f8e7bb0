//! The cpio and EIF formats on small inputs: determinism, normalization,
//! refusals, and the EIF layout and PCRs recomputed independently of the
//! writer (plus a vector computed with Python's hashlib).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use enclave_image::cpio::{self, CpioError, Entry};
use enclave_image::eif::{self, EifError, Metadata};
use sha2::{Digest, Sha384};

fn tree(root: &Path, file_mode: u32) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(root.join("readme"), b"hello").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("readme"), fs::Permissions::from_mode(file_mode)).unwrap();
    std::os::unix::fs::symlink("usr/bin/tool", root.join("link")).unwrap();
}

fn archive(root: &Path, mtime: u64) -> Vec<u8> {
    let entries = cpio::entries_from_dir(root).unwrap();
    cpio::write_newc_gz(entries, mtime, Vec::new()).unwrap()
}

#[test]
fn the_same_tree_gives_the_same_bytes_whatever_its_modes_and_times() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    tree(a.path(), 0o644);
    tree(b.path(), 0o600);
    // Different mtimes on disk, different creation order.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(b.path().join("readme"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(archive(a.path(), 0), archive(b.path(), 0));
    assert_ne!(
        archive(a.path(), 0),
        archive(a.path(), 1),
        "the mtime is in the bytes"
    );
}

#[test]
fn entries_are_normalized_sorted_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), 0o664);
    let mut entries = cpio::entries_from_dir(dir.path()).unwrap();
    entries.push(Entry::CharDevice {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::Dir { path: "dev".into() });
    let bytes = cpio::write_newc_gz(entries, 7, Vec::new()).unwrap();
    let listed = cpio::read_archive(&bytes).unwrap();
    let paths: Vec<&str> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".",
            "dev",
            "dev/console",
            "link",
            "readme",
            "usr",
            "usr/bin",
            "usr/bin/tool"
        ]
    );
    for e in &listed {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 7), "{e:?}");
    }
    let by = |p: &str| listed.iter().find(|e| e.path == p).unwrap();
    assert_eq!(by("usr").mode, 0o040_755);
    assert_eq!(by("readme").mode, 0o100_644);
    assert_eq!(by("readme").data, b"hello");
    assert_eq!(by("usr/bin/tool").mode, 0o100_755);
    assert_eq!(by("link").mode, 0o120_777);
    assert_eq!(by("link").data, b"usr/bin/tool");
    assert_eq!(by("dev/console").mode, 0o020_600);
    assert_eq!(by("dev/console").rdev, (5, 1));
}

#[test]
fn newc_header_layout_matches_the_kernel_format() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), b"xyz").unwrap();
    let mut raw = Vec::new();
    cpio::write_newc(cpio::entries_from_dir(dir.path()).unwrap(), 0, &mut raw).unwrap();
    // The root first: ino 1, mode 040755, nlink 2, namesize 2 (".\0").
    let root_header = "070701\
        00000001000041ed000000000000000000000002000000000000000000000000\
        00000000000000000000000000000002\
        00000000";
    assert_eq!(std::str::from_utf8(&raw[..110]).unwrap(), root_header);
    assert_eq!(&raw[110..112], b".\0");
    // "070701", ino 2, mode 0100644, uid, gid, nlink 1, mtime, size 3,
    // devmajor, devminor, rdevmajor, rdevminor, namesize 2 ("a\0"), check.
    let expected_header = "070701\
        00000002000081a4000000000000000000000001000000000000000300000000\
        00000000000000000000000000000002\
        00000000";
    assert_eq!(
        std::str::from_utf8(&raw[112..222]).unwrap(),
        expected_header
    );
    // Name "a\0" padded to a multiple of 4 (110 + 2 = 112), then the data padded.
    assert_eq!(&raw[222..224], b"a\0");
    assert_eq!(&raw[224..228], b"xyz\0");
    assert!(std::str::from_utf8(&raw[228..])
        .unwrap()
        .contains("TRAILER!!!"));
    assert_eq!(raw.len() % 4, 0);
}

#[test]
fn hard_links_special_files_and_bad_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), b"x").unwrap();
    fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
    assert!(matches!(
        cpio::entries_from_dir(dir.path()),
        Err(CpioError::HardLink(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(matches!(
        cpio::entries_from_dir(dir.path()),
        Err(CpioError::SpecialFile(_))
    ));

    for bad in ["/abs", "a/../b", "", "a//b", "./a"] {
        let err = cpio::write_newc(vec![Entry::Dir { path: bad.into() }], 0, Vec::new());
        assert!(
            matches!(err, Err(CpioError::BadPath(_))),
            "{bad:?}: {err:?}"
        );
    }
    let twice = vec![
        Entry::Dir { path: "a".into() },
        Entry::Dir { path: "a".into() },
    ];
    assert!(matches!(
        cpio::write_newc(twice, 0, Vec::new()),
        Err(CpioError::Duplicate(_))
    ));
    assert!(matches!(
        cpio::write_newc(Vec::new(), 1 << 40, Vec::new()),
        Err(CpioError::BadMtime(_))
    ));
}

/// A small EIF from fixed inputs; returns (dir, eif path, writer's PCRs).
fn small_eif() -> (tempfile::TempDir, std::path::PathBuf, eif::Pcrs) {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    fs::write(p("kernel"), b"kernel-bytes").unwrap();
    fs::write(p("r1"), b"ramdisk-one").unwrap();
    fs::write(p("r2"), b"ramdisk-two").unwrap();
    let metadata = Metadata::new("test", "1", "none", 1_700_000_000).unwrap();
    let out = fs::File::create(p("image.eif")).unwrap();
    let pcrs = eif::write_eif(
        &p("kernel"),
        "console=ttyS0",
        &[&p("r1"), &p("r2")],
        &metadata,
        out,
    )
    .unwrap();
    let path = p("image.eif");
    (dir, path, pcrs)
}

/// PCRs of the inputs above, computed with Python's hashlib:
/// sha384(b"\0"*48 + sha384(data).digest()).
const PCR0: &str = "0c0a8697f6f297dadd9165cf4c7081abb5a3d8e2142e263cec4f9a53323815da7b283a7964d4210ea36e92d51f0e04ec";
const PCR1: &str = "c65704136beafecb14fed54195f30c7daf058f937a07cef51d6bc7f4e8f7414fc74e51ce4e09d52e213e3b2e62f522c1";
const PCR2: &str = "2cd856f1e4972f1947f680062077b9dc8d0c6179f7098d8ff298ff592accf884ed26df19b87937cbfe620dc14fc57bad";

#[test]
fn pcrs_match_a_vector_computed_elsewhere() {
    let (_dir, path, pcrs) = small_eif();
    assert_eq!(hex::encode(pcrs.pcr0), PCR0);
    assert_eq!(hex::encode(pcrs.pcr1), PCR1);
    assert_eq!(hex::encode(pcrs.pcr2), PCR2);
    let info = eif::read_eif(&path, None).unwrap();
    assert_eq!(info.pcrs, pcrs);
    let json: serde_json::Value = serde_json::from_str(&pcrs.to_measurements_json()).unwrap();
    assert_eq!(json["HashAlgorithm"], "Sha384 { ... }");
    assert_eq!(json["PCR0"], PCR0);
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes(b[o..o + 2].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// Walks the file by hand (not with the crate's reader): header fields,
/// section table, section headers, CRC32, and the PCRs from the bytes.
#[test]
fn the_eif_layout_is_what_aws_defines() {
    let (_dir, path, pcrs) = small_eif();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b".eif");
    assert_eq!(be16(&bytes, 4), 4, "version");
    assert_eq!(be16(&bytes, 6), 0, "flags");
    assert_eq!(be64(&bytes, 8), 1 << 30, "default memory");
    assert_eq!(be64(&bytes, 16), 2, "default cpus");
    let count = be16(&bytes, 26) as usize;
    assert_eq!(count, 5);
    let mut sections = Vec::new();
    for i in 0..count {
        let offset = be64(&bytes, 28 + 8 * i) as usize;
        let size = be64(&bytes, 28 + 256 + 8 * i) as usize;
        let kind = be16(&bytes, offset);
        assert_eq!(be64(&bytes, offset + 4) as usize, size);
        sections.push((kind, &bytes[offset + 12..offset + 12 + size]));
    }
    for i in count..32 {
        assert_eq!(be64(&bytes, 28 + 8 * i), 0);
    }
    let kinds: Vec<u16> = sections.iter().map(|s| s.0).collect();
    assert_eq!(
        kinds,
        [1, 2, 5, 3, 3],
        "kernel, cmdline, metadata, ramdisks"
    );
    assert_eq!(sections[0].1, b"kernel-bytes");
    assert_eq!(sections[1].1, b"console=ttyS0", "no trailing NUL");
    let meta: serde_json::Value = serde_json::from_slice(sections[2].1).unwrap();
    assert_eq!(meta["BuildMetadata"]["BuildTime"], "2023-11-14T22:13:20Z");
    assert_eq!(meta["ImageName"], "test");
    let last = sections.last().unwrap().1;
    assert_eq!(
        last.as_ptr() as usize + last.len() - bytes.as_ptr() as usize,
        bytes.len()
    );

    let stored = u32::from_be_bytes(bytes[544..548].try_into().unwrap());
    let mut crc_input = bytes[..544].to_vec();
    crc_input.extend_from_slice(&bytes[548..]);
    assert_eq!(stored, crc32fast::hash(&crc_input));

    let extend = |data: &[u8]| {
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(Sha384::digest(data));
        hex::encode(h.finalize())
    };
    let cat = |parts: &[&[u8]]| parts.concat();
    let (k, c, r1, r2) = (sections[0].1, sections[1].1, sections[3].1, sections[4].1);
    assert_eq!(extend(&cat(&[k, c, r1, r2])), hex::encode(pcrs.pcr0));
    assert_eq!(extend(&cat(&[k, c, r1])), hex::encode(pcrs.pcr1));
    assert_eq!(extend(r2), hex::encode(pcrs.pcr2));
}

#[test]
fn corrupt_or_truncated_images_are_refused_and_extract_writes_nothing() {
    let (dir, path, _) = small_eif();
    let good = fs::read(&path).unwrap();

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    fs::write(&path, &flipped).unwrap();
    assert!(matches!(
        eif::read_eif(&path, None),
        Err(EifError::Crc { .. })
    ));
    let out = dir.path().join("extracted");
    assert!(eif::extract(&path, &out).is_err());
    assert!(!out.exists(), "a corrupt image must not be half-extracted");

    fs::write(&path, &good[..good.len() - 3]).unwrap();
    assert!(matches!(
        eif::read_eif(&path, None),
        Err(EifError::Malformed(_))
    ));

    let mut extra = good.clone();
    extra.push(0);
    fs::write(&path, &extra).unwrap();
    assert!(matches!(
        eif::read_eif(&path, None),
        Err(EifError::Malformed(_))
    ));

    let mut bad_count = good.clone();
    bad_count[26..28].copy_from_slice(&40u16.to_be_bytes());
    fs::write(&path, &bad_count).unwrap();
    assert!(matches!(
        eif::read_eif(&path, None),
        Err(EifError::Malformed(_))
    ));

    // A section size that would run past the end (or overflow) is refused
    // before anything is read or allocated for it.
    let mut huge = good.clone();
    let last_size = 28 + 256 + 8 * 4;
    huge[last_size..last_size + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    fs::write(&path, &huge).unwrap();
    let err = eif::read_eif(&path, None).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");

    fs::write(&path, b"not an eif").unwrap();
    assert!(matches!(
        eif::read_eif(&path, None),
        Err(EifError::Malformed(_))
    ));
}

#[test]
fn extract_writes_every_section() {
    let (dir, path, _) = small_eif();
    let out = dir.path().join("sections");
    let (info, files) = eif::extract(&path, &out).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "kernel",
            "cmdline",
            "metadata.json",
            "ramdisk-0",
            "ramdisk-1"
        ]
    );
    assert_eq!(fs::read(out.join("kernel")).unwrap(), b"kernel-bytes");
    assert_eq!(fs::read(out.join("cmdline")).unwrap(), b"console=ttyS0");
    assert_eq!(fs::read(out.join("ramdisk-1")).unwrap(), b"ramdisk-two");
    assert_eq!(info.cmdline, "console=ttyS0");
}

#[test]
fn bad_cmdlines_and_ramdisk_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    fs::write(&k, b"k").unwrap();
    let m = Metadata::new("t", "1", "k", 0).unwrap();
    let nul = eif::write_eif(&k, "a\0b", &[&k], &m, Vec::new());
    assert!(matches!(nul, Err(EifError::BadCmdline)));
    let long = eif::write_eif(&k, &"x".repeat(4096), &[&k], &m, Vec::new());
    assert!(matches!(long, Err(EifError::BadCmdline)));
    let none = eif::write_eif(&k, "x", &[], &m, Vec::new());
    assert!(matches!(none, Err(EifError::RamdiskCount)));
}

#[test]
fn inputs_are_checked_against_their_pins() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, b"abc").unwrap();
    // sha256("abc") and npm-style sha512 integrity of "abc".
    enclave_image::verify_digest(
        &f,
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    )
    .unwrap();
    enclave_image::verify_digest(&f, "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==").unwrap();
    let err = enclave_image::verify_digest(
        &f,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .unwrap_err();
    assert!(err.to_string().contains("the pin says"), "{err}");
    assert!(enclave_image::verify_digest(&f, "md5:x").is_err());
}

/// `enclave-image eif --toolchain` adds a tool that leaves no `.comment`
/// (make image's GNU ld) to `CustomMetadata.Toolchain`; a name with a
/// control character or too long is refused before anything is written.
#[test]
fn eif_toolchain_names_a_tool_in_the_metadata_and_refuses_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("bzImage");
    fs::write(&kernel, b"not really a kernel").unwrap();
    let cmdline = dir.path().join("cmdline");
    fs::write(&cmdline, b"console=ttyS0\n").unwrap();
    let ramdisk = dir.path().join("ramdisk");
    fs::write(&ramdisk, b"ramdisk").unwrap();
    let eif_path = dir.path().join("out.eif");
    let run = |tool: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enclave-image"))
            .arg("eif")
            .arg("--kernel")
            .arg(&kernel)
            .arg("--cmdline-file")
            .arg(&cmdline)
            .arg("--ramdisk")
            .arg(&ramdisk)
            .arg("--out")
            .arg(&eif_path)
            .args(["--build-time", "0", "--toolchain", tool])
            .output()
            .unwrap()
    };

    for bad in ["", "GNU ld\n2.40", &"x".repeat(201)] {
        let out = run(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--toolchain"), "{stderr}");
        assert!(!eif_path.exists(), "{bad:?} wrote an EIF");
    }

    let out = run("GNU ld (GNU Binutils for Debian) 2.40");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = eif::read_eif(&eif_path, None).unwrap();
    let metadata = info.metadata.expect("JSON metadata");
    assert_eq!(
        metadata["CustomMetadata"]["Toolchain"],
        serde_json::json!(["GNU ld (GNU Binutils for Debian) 2.40"]),
        "{metadata}"
    );
}
