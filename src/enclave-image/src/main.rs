//! `enclave-image`: build, inspect and unpack reproducible enclave images.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use enclave_image::{cpio, eif};

/// Build, inspect and unpack reproducible AWS Nitro Enclave images (EIF).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Archive a directory as a deterministic gzip'd newc cpio.
    Cpio {
        /// Directory whose content becomes the archive's root.
        #[arg(long)]
        root: PathBuf,
        /// Extra character device, as PATH:MAJOR:MINOR:MODE (e.g. dev/console:5:1:600).
        #[arg(long = "char-device", value_name = "SPEC")]
        char_devices: Vec<String>,
        /// Every entry's mtime (default: $SOURCE_DATE_EPOCH, else 0).
        #[arg(long)]
        mtime: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write an EIF from a kernel, a cmdline and ramdisks; print its PCRs.
    Eif {
        #[arg(long)]
        kernel: PathBuf,
        /// File holding the kernel command line (trailing newlines are dropped).
        #[arg(long)]
        cmdline_file: PathBuf,
        /// Ramdisks in order: the first is measured into PCR1, the others into PCR2.
        #[arg(long, required = true)]
        ramdisk: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Also write nitro-cli's measurements JSON here.
        #[arg(long)]
        pcrs_out: Option<PathBuf>,
        #[arg(long, default_value = "nautilus")]
        name: String,
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        image_version: String,
        /// Recorded in the metadata section (not measured); default: the
        /// version string in the bzImage's header, else "unknown".
        #[arg(long)]
        kernel_version: Option<String>,
        /// Record the compilers named in this ELF file's `.comment` in the
        /// metadata (`CustomMetadata.Toolchain`; repeatable).
        #[arg(long)]
        toolchain_from: Vec<PathBuf>,
        /// Also record this tool in `CustomMetadata.Toolchain`: one that
        /// leaves nothing in the binaries, such as GNU ld's `--version` line
        /// (repeatable; at most 200 printable characters).
        #[arg(long)]
        toolchain: Vec<String>,
        /// Build time recorded in the metadata (default: $SOURCE_DATE_EPOCH, else 0).
        #[arg(long)]
        build_time: Option<i64>,
    },
    /// Check an EIF and print its header, sections and PCRs.
    Describe {
        eif: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an EIF and print its PCRs as nitro-cli's measurements JSON.
    Pcrs { eif: PathBuf },
    /// Check an EIF and write its sections to files (kernel, cmdline, ramdisk-N, …).
    Extract {
        eif: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// List a (gzip'd) newc cpio archive: mode, owner, size, path.
    List { archive: PathBuf },
    /// Check a file against a pin (sha512-<base64> or sha256:<hex>).
    Verify { file: PathBuf, pin: String },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("enclave-image: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn source_date_epoch() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// Writes through a temporary file renamed into place, so a failed build
/// never leaves a half-written output that looks complete.
fn write_atomically(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let result = f(&mut out).and_then(|()| Ok(out.flush()?));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn parse_char_device(spec: &str) -> anyhow::Result<cpio::Entry> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [path, major, minor, mode] = parts.as_slice() else {
        bail!("--char-device {spec:?}: expected PATH:MAJOR:MINOR:MODE");
    };
    Ok(cpio::Entry::CharDevice {
        path: path.trim_start_matches('/').to_owned(),
        major: major
            .parse()
            .with_context(|| format!("--char-device {spec:?}: bad major"))?,
        minor: minor
            .parse()
            .with_context(|| format!("--char-device {spec:?}: bad minor"))?,
        mode: u32::from_str_radix(mode, 8)
            .with_context(|| format!("--char-device {spec:?}: bad octal mode"))?,
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cpio {
            root,
            char_devices,
            mtime,
            out,
        } => {
            let mtime = match mtime {
                Some(m) => m,
                None => {
                    u64::try_from(source_date_epoch()?).context("SOURCE_DATE_EPOCH is negative")?
                }
            };
            let mut entries = cpio::entries_from_dir(&root)
                .with_context(|| format!("reading {}", root.display()))?;
            for spec in &char_devices {
                entries.push(parse_char_device(spec)?);
            }
            write_atomically(&out, |w| {
                Ok(cpio::write_newc_gz(entries, mtime, w).map(|_| ())?)
            })?;
        }
        Command::Eif {
            kernel,
            cmdline_file,
            ramdisk,
            out,
            pcrs_out,
            name,
            image_version,
            kernel_version,
            toolchain_from,
            toolchain,
            build_time,
        } => {
            if let Some(tool) = toolchain.iter().find(|t| {
                t.is_empty() || t.chars().count() > 200 || t.chars().any(char::is_control)
            }) {
                bail!(
                    "--toolchain {tool:?}: name a tool in 1 to 200 printable characters, e.g. the first line of `ld --version`"
                );
            }
            let cmdline = std::fs::read_to_string(&cmdline_file)
                .with_context(|| format!("reading {}", cmdline_file.display()))?;
            let cmdline = cmdline.trim_end_matches('\n');
            let build_time = match build_time {
                Some(t) => t,
                None => source_date_epoch()?,
            };
            let kernel_version = match kernel_version {
                Some(v) => v,
                None => {
                    let bytes = std::fs::read(&kernel)
                        .with_context(|| format!("reading {}", kernel.display()))?;
                    enclave_image::provenance::bzimage_version(&bytes)
                        .unwrap_or_else(|| "unknown".to_owned())
                }
            };
            let mut compilers = Vec::new();
            for binary in &toolchain_from {
                for c in enclave_image::provenance::elf_compilers(binary)? {
                    if !compilers.contains(&c) {
                        compilers.push(c);
                    }
                }
            }
            for tool in toolchain {
                if !compilers.contains(&tool) {
                    compilers.push(tool);
                }
            }
            let metadata = eif::Metadata::new(&name, &image_version, &kernel_version, build_time)?
                .with_toolchain(compilers);
            let ramdisks: Vec<&Path> = ramdisk.iter().map(PathBuf::as_path).collect();
            let mut pcrs = None;
            write_atomically(&out, |w| {
                pcrs = Some(eif::write_eif(&kernel, cmdline, &ramdisks, &metadata, w)?);
                Ok(())
            })?;
            let json = pcrs.context("no PCRs computed")?.to_measurements_json();
            if let Some(path) = pcrs_out {
                write_atomically(&path, |w| Ok(w.write_all(json.as_bytes())?))?;
            }
            print!("{json}");
        }
        Command::Describe { eif: path, json } => {
            let info = eif::read_eif(&path, None)
                .with_context(|| format!("reading {}", path.display()))?;
            if json {
                let mut value = serde_json::to_value(&info)?;
                value["Measurements"] = serde_json::from_str(&info.pcrs.to_measurements_json())?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", describe_text(&info));
            }
        }
        Command::Pcrs { eif: path } => {
            let info = eif::read_eif(&path, None)
                .with_context(|| format!("reading {}", path.display()))?;
            print!("{}", info.pcrs.to_measurements_json());
        }
        Command::Extract { eif: path, out_dir } => {
            let (_, files) = eif::extract(&path, &out_dir)
                .with_context(|| format!("extracting {}", path.display()))?;
            for file in files {
                println!("{}", file.display());
            }
        }
        Command::List { archive } => {
            let bytes = std::fs::read(&archive)
                .with_context(|| format!("reading {}", archive.display()))?;
            let mut stdout = std::io::stdout().lock();
            for e in cpio::read_archive(&bytes)? {
                let target = if e.is_symlink() {
                    format!(" -> {}", String::from_utf8_lossy(&e.data))
                } else {
                    String::new()
                };
                writeln!(
                    stdout,
                    "{:06o} {}:{} {:>10} /{}{target}",
                    e.mode,
                    e.uid,
                    e.gid,
                    e.data.len(),
                    e.path
                )?;
            }
        }
        Command::Verify { file, pin } => {
            enclave_image::verify_digest(&file, &pin)?;
            println!("{}: OK", file.display());
        }
    }
    Ok(())
}

fn describe_text(info: &eif::EifInfo) -> String {
    let mut s = format!(
        "EIF version {}, flags {:#06x}, default memory {} MiB, default CPUs {}, CRC32 {:08x} (valid)\n",
        info.version,
        info.flags,
        info.default_mem / (1024 * 1024),
        info.default_cpus,
        info.crc32
    );
    for (i, section) in info.sections.iter().enumerate() {
        s += &format!(
            "section {i}: {:<9} offset {:>10} size {:>10}\n",
            format!("{:?}", section.kind),
            section.offset,
            section.size
        );
    }
    s += &format!("cmdline: {}\n", info.cmdline);
    if let Some(meta) = &info.metadata {
        s += &format!("metadata: {meta}\n");
    }
    s += &format!(
        "PCR0: {}\nPCR1: {}\nPCR2: {}\n",
        hex::encode(info.pcrs.pcr0),
        hex::encode(info.pcrs.pcr1),
        hex::encode(info.pcrs.pcr2)
    );
    s
}
