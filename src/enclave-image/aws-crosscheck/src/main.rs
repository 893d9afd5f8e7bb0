//! `eif-aws-crosscheck [--expect-pcrs PCRS_JSON] KERNEL CMDLINE_FILE EIF RAMDISK...`
//!
//! 1. Reads EIF (written by `enclave-image`) with AWS's `EifReader`: the CRC
//!    must check and its measurements are printed as JSON.
//! 2. With `--expect-pcrs`, AWS's PCR0, PCR1 and PCR2 must equal those in
//!    PCRS_JSON (nitro-cli's measurements JSON, `out/nitro.pcrs`).
//! 3. Builds an EIF from the same kernel, cmdline, ramdisks and metadata with
//!    AWS's `EifBuilder` and requires it to be byte-identical to EIF.
//!
//! Exits 0 when all hold, 1 otherwise.

use std::path::Path;
use std::process::ExitCode;

use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::EifBuilder;
use sha2::Digest;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let expected = match args.first().map(String::as_str) {
        Some("--expect-pcrs") if args.len() > 1 => {
            let path = args[1].clone();
            args.drain(..2);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some((path, text)),
                Err(e) => {
                    eprintln!("reading {path}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    if args.len() < 4 {
        eprintln!(
            "usage: eif-aws-crosscheck [--expect-pcrs PCRS_JSON] KERNEL CMDLINE_FILE EIF RAMDISK..."
        );
        return ExitCode::from(2);
    }
    let (kernel, cmdline_file, ours, ramdisks) = (&args[0], &args[1], &args[2], &args[3..]);

    let mut reader = match EifReader::from_eif(ours.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("AWS EifReader refused {ours}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !reader.check_crc() {
        eprintln!("AWS EifReader: CRC mismatch in {ours}");
        return ExitCode::FAILURE;
    }
    let measurements = match reader.get_measurements() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("AWS EifReader: no measurements: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(metadata) = reader.get_metadata() else {
        eprintln!("AWS EifReader: no metadata section in {ours}");
        return ExitCode::FAILURE;
    };
    let measurements_json = format!(
        "{{\"PCR0\": \"{}\", \"PCR1\": \"{}\", \"PCR2\": \"{}\", \"crc32\": \"{:08x}\"}}",
        measurements["PCR0"],
        measurements["PCR1"],
        measurements["PCR2"],
        reader.get_header().eif_crc32
    );

    if let Some((path, text)) = &expected {
        let mut differ = false;
        for pcr in ["PCR0", "PCR1", "PCR2"] {
            // nitro-cli's JSON: "PCRn": "<96 hex digits>", one per line.
            let ours = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("\"{pcr}\": \"")))
                .and_then(|rest| rest.split('"').next());
            if ours != Some(measurements[pcr].as_str()) {
                eprintln!(
                    "{pcr} differs: AWS's image-format crate computes {}, {path} says {}",
                    measurements[pcr],
                    ours.unwrap_or("nothing")
                );
                differ = true;
            }
        }
        if differ {
            println!("{measurements_json}");
            return ExitCode::FAILURE;
        }
        eprintln!("AWS's PCR0, PCR1 and PCR2 equal {path}'s");
    }

    let cmdline = std::fs::read_to_string(cmdline_file).expect("reading the cmdline file");
    let mut builder = EifBuilder::new(
        Path::new(kernel),
        cmdline.trim_end_matches('\n').to_owned(),
        None,
        sha2::Sha384::new(),
        0,
        metadata,
    );
    for ramdisk in ramdisks {
        builder.add_ramdisk(Path::new(ramdisk));
    }
    let theirs_path = format!("{ours}.aws");
    let mut theirs = std::fs::File::create(&theirs_path).expect("creating the AWS-built EIF");
    let built = builder.write_to(&mut theirs);
    drop(theirs);
    let same = std::fs::read(&theirs_path).ok() == std::fs::read(ours).ok();
    let _ = std::fs::remove_file(&theirs_path);
    println!("{measurements_json}");
    if built["PCR0"] != measurements["PCR0"] {
        eprintln!("AWS EifBuilder's PCR0 differs from its reader's");
        return ExitCode::FAILURE;
    }
    if !same {
        eprintln!("AWS EifBuilder wrote different bytes from the same inputs");
        return ExitCode::FAILURE;
    }
    eprintln!("AWS EifReader accepts {ours} (CRC ok) and EifBuilder writes the same bytes");
    ExitCode::SUCCESS
}
