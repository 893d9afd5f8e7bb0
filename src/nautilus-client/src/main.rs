//! `nautilus-client`: verify attestation documents and run verified tasks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use nautilus_client::{
    CheckTime, Client, ConnectOptions, ExpectedPcrs, Policy, TaskSpec, TrustedRoot,
};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Verify Nautilus enclave attestations and signed task results",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify an attestation document file. Exit 0 and print its fields as
    /// JSON, or exit 1 with the reason on stderr.
    VerifyDoc(VerifyDocArgs),
    /// Attest a running server and print the verified document and manifest.
    /// Exit 0, or 1 with the reason.
    Attest(AttestArgs),
    /// Attest a server, run a task, verify the signed result and print it.
    /// Exit 0 if the task succeeded, 1 if it ran and failed (the result is
    /// still verified and printed), 2 if anything could not be verified.
    Run(RunArgs),
    /// Operator secrets: make an operator key, or set a secret in an
    /// attested enclave (over its attested TLS only).
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Make an operator key: writes the private key (hex) to a new file
    /// readable only by you, prints the public key to pin with the server's
    /// `--operator-key` (in the image, so it is measured).
    Keygen {
        /// Where to write the private key; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Attest the enclave (a fresh attestation every time: values are lost
    /// when it restarts), then set each NAME=@FILE to the file's contents,
    /// signed by the operator key over a fresh server nonce.
    Put(PutArgs),
}

#[derive(Debug, Args)]
struct PutArgs {
    /// Server base URL: https:// (secrets never travel in plain HTTP).
    #[arg(long)]
    url: String,
    /// The operator's private key file (from `secrets keygen`).
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// NAME=@FILE: the secret NAME gets FILE's contents (UTF-8; `@-` is
    /// stdin). Values are never taken from the command line, where other
    /// users and shell history would see them.
    #[arg(required = true, value_name = "NAME=@FILE")]
    secrets: Vec<String>,
}

#[derive(Debug, Args)]
struct TrustArgs {
    /// Trust this root certificate (PEM or DER) instead of the AWS Nitro root,
    /// e.g. the dev root a dev-mode server writes.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Expected PCRs: a file from the image build, either nitro-cli's JSON
    /// (`nitro-cli describe-eif --eif-path IMAGE.eif > FILE`) or eif_build's
    /// `--pcrs_output` text (`<hex> PCRn` lines). Every PCR in it must match.
    #[arg(long)]
    pcrs: Option<PathBuf>,
    /// Accept debug-mode documents (PCR0, PCR1 and PCR2 all zero).
    #[arg(long)]
    allow_debug: bool,
}

#[derive(Debug, Args)]
struct VerifyDocArgs {
    /// The COSE_Sign1 document; `-` reads stdin.
    file: PathBuf,
    /// The file holds hex text rather than raw bytes.
    #[arg(long)]
    hex: bool,
    /// Check at the document's own timestamp (for archived documents).
    #[arg(long, conflicts_with = "at")]
    at_doc_time: bool,
    /// Check at this time, in milliseconds since the UNIX epoch.
    #[arg(long, value_name = "UNIX_MS")]
    at: Option<u64>,
    /// Reject documents older than this at the check time (default 300).
    #[arg(long, value_name = "N")]
    max_age_secs: Option<u64>,
    /// Expected nonce, hex.
    #[arg(long)]
    nonce: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Debug, Args)]
struct AttestArgs {
    /// Server base URL, e.g. https://127.0.0.1:3000 (its TLS key is pinned
    /// through the attestation, no CA involved)
    #[arg(long)]
    url: String,
    /// Accept plain http:// to an nsm enclave: the parent instance then
    /// reads every request and result.
    #[arg(long)]
    insecure_http: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server base URL, as for `attest`.
    #[arg(long)]
    url: String,
    /// As for `attest`.
    #[arg(long)]
    insecure_http: bool,
    /// Task directory on the server.
    #[arg(long, default_value = "nodejs-task")]
    task: String,
    /// Seconds before the server stops the task.
    #[arg(long)]
    timeout: Option<u64>,
    /// Send this file's contents (UTF-8) as the task's stdin.
    #[arg(long)]
    stdin_file: Option<PathBuf>,
    /// Ask for the compact signed form: the enclave signs the outputs'
    /// SHA-256 and lengths (small enough for a chain), texts beside it.
    #[arg(long)]
    compact: bool,
    #[command(flatten)]
    trust: TrustArgs,
    /// Arguments for the task.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Largest file `verify-doc`, `--root` or `--pcrs` reads (the PCR file reader
/// has its own, smaller cap).
const MAX_INPUT_FILE: u64 = 1024 * 1024;
/// Largest secret value file (the server's own limit is 64 KiB).
const MAX_SECRET_FILE: u64 = 64 * 1024;
/// Largest stdin file `run` sends (the server's own limit is 1 MiB).
const MAX_STDIN_FILE: u64 = 1024 * 1024;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let failure = match cli.command {
        Command::Run(_) => 2,
        _ => 1,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(failure);
        }
    };
    let root_given = match &cli.command {
        Command::VerifyDoc(a) => a.trust.root.is_some(),
        Command::Attest(a) => a.trust.root.is_some(),
        Command::Run(a) => a.trust.root.is_some(),
        Command::Secrets(SecretsCommand::Put(a)) => a.trust.root.is_some(),
        Command::Secrets(SecretsCommand::Keygen { .. }) => false,
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}{}", fix_hint(&e, root_given));
            ExitCode::from(failure)
        }
    }
}

/// The flag a rejection most often means someone is missing, named after
/// the reason: a dev server's documents chain to the root it wrote, and are
/// debug-mode documents.
fn fix_hint(e: &anyhow::Error, root_given: bool) -> &'static str {
    use nautilus_client::attestation::Error;
    let rejection = e.chain().find_map(|c| c.downcast_ref::<Error>());
    match rejection {
        Some(Error::RootMismatch { .. }) if !root_given => {
            " (a dev server, such as `make run`'s, signs under its own root: pass \
             `--root out/dev-root.pem`, the file its --dev-root-out wrote)"
        }
        Some(Error::RootMismatch { .. }) => {
            " (for a dev server, pass the root that server wrote with --dev-root-out \
             (`make run` writes out/dev-root.pem, new at each start); for a real enclave, drop --root)"
        }
        Some(Error::DebugMode) => {
            " (dev servers and debug-mode enclaves only make such documents: pass \
             `--allow-debug` to accept them, never for a production enclave)"
        }
        _ => "",
    }
}

/// Whether `raw` is hex text (what `/get_attestation` answers, in its
/// `attestation` field) rather than a document's bytes: a COSE_Sign1
/// document starts with a CBOR array or tag byte, never an ASCII digit.
fn looks_like_hex(raw: &[u8]) -> bool {
    let text = raw.trim_ascii();
    !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit)
}

/// `--help` and `--version` print as usual; any other argument error is one
/// line on stderr with the failure code of the subcommand (2 for `run`, else 1),
/// like every other failure.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    // No arguments at all: the usage, on stderr, as a failure.
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(1);
    }
    let rendered = e.to_string();
    let reason = rendered.lines().next().unwrap_or("invalid arguments");
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    eprintln!("error: {reason} (see --help)");
    let run = std::env::args().nth(1).as_deref() == Some("run");
    ExitCode::from(if run { 2 } else { 1 })
}

/// Prints one line of output. A reader that went away (`| head`) is not an
/// error worth a panic: the result was produced, nobody wants the rest.
fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::VerifyDoc(a) => {
            let raw = read_limited(&a.file, MAX_INPUT_FILE)?;
            let bytes = if a.hex {
                let text = String::from_utf8(raw).context("--hex file is not text")?;
                hex::decode(text.trim()).context("--hex file is not valid hex")?
            } else if looks_like_hex(&raw) {
                bail!(
                    "{} holds hex text, not a document's bytes: pass --hex to read it as hex",
                    a.file.display()
                );
            } else if raw.trim_ascii_start().starts_with(b"{") {
                bail!(
                    "{} holds JSON, not a document: save the `attestation` field of \
                     /get_attestation's answer (hex) and pass --hex",
                    a.file.display()
                );
            } else {
                raw
            };
            let mut policy = a.trust.policy()?;
            if a.at_doc_time {
                policy = policy.check_time(CheckTime::DocumentTimestamp);
            } else if let Some(at) = a.at {
                policy = policy.check_time(CheckTime::UnixMillis(at));
            }
            if let Some(secs) = a.max_age_secs {
                policy = policy.max_age(Some(Duration::from_secs(secs)));
            }
            if let Some(nonce) = &a.nonce {
                policy =
                    policy.expected_nonce(hex::decode(nonce).context("--nonce is not valid hex")?);
            }
            let doc = nautilus_client::attestation::verify(&bytes, &a.trust.root()?, &policy)?;
            print_line(&serde_json::to_string(&doc.summary())?)?;
            Ok(0)
        }
        Command::Attest(a) => {
            let client = connect(&a.url, &a.trust, a.insecure_http).await?;
            let manifest: serde_json::Value = serde_json::from_slice(client.manifest().raw())?;
            let out =
                json!({ "attestation": client.attestation().summary(), "manifest": manifest });
            print_line(&out.to_string())?;
            Ok(0)
        }
        Command::Secrets(SecretsCommand::Keygen { out }) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt;
            let key = nautilus_client::SigningKey::random(&mut rand_core::OsRng);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let secret = zeroize::Zeroizing::new(hex::encode(key.to_bytes()));
            writeln!(file, "{}", secret.as_str())?;
            let public = result_signing::encode_public_key(key.verifying_key());
            print_line(&hex::encode(public))?;
            Ok(0)
        }
        Command::Secrets(SecretsCommand::Put(a)) => {
            let text = zeroize::Zeroizing::new(
                String::from_utf8(read_limited(&a.key, 1024)?).context("--key is not text")?,
            );
            let bytes = zeroize::Zeroizing::new(
                hex::decode(text.trim()).context("--key must hold a hex P-256 private key")?,
            );
            let key = nautilus_client::SigningKey::from_slice(&bytes)
                .context("--key is not a P-256 private key")?;
            let mut values = Vec::new();
            for spec in &a.secrets {
                let Some((name, path)) = spec.split_once("=@") else {
                    bail!("{spec:?} is not NAME=@FILE (values are read from files, never the command line)");
                };
                let value = zeroize::Zeroizing::new(
                    String::from_utf8(read_limited(Path::new(path), MAX_SECRET_FILE)?)
                        .with_context(|| format!("{path} is not UTF-8"))?,
                );
                values.push((name.to_owned(), value));
            }
            let client = connect(&a.url, &a.trust, false).await?;
            for (name, value) in &values {
                client.put_secret(&key, name, value).await?;
                eprintln!("set {name}");
            }
            Ok(0)
        }
        Command::Run(a) => {
            let client = connect(&a.url, &a.trust, a.insecure_http).await?;
            let mut spec = TaskSpec::new(a.task).args(a.args);
            if let Some(t) = a.timeout {
                spec = spec.timeout_secs(t);
            }
            if a.compact {
                spec = spec.signing(nautilus_client::Signing::Compact);
            }
            if let Some(path) = &a.stdin_file {
                let bytes = read_limited(path, MAX_STDIN_FILE)?;
                spec = spec.stdin(String::from_utf8(bytes).context("--stdin-file is not UTF-8")?);
            }
            let result = client.run_task(&spec).await?;
            print_line(&serde_json::to_string(result.signed())?)?;
            Ok(if result.data().status == "success" {
                0
            } else {
                1
            })
        }
    }
}

async fn connect(url: &str, trust: &TrustArgs, insecure_http: bool) -> anyhow::Result<Client> {
    let options = ConnectOptions { insecure_http };
    Ok(Client::connect_with(url, trust.root()?, trust.policy()?, options).await?)
}

impl TrustArgs {
    fn root(&self) -> anyhow::Result<TrustedRoot> {
        match &self.root {
            None => Ok(TrustedRoot::aws_nitro()?),
            Some(path) => {
                let bytes = read_limited(path, MAX_INPUT_FILE)?;
                TrustedRoot::from_pem_or_der(&bytes)
                    .with_context(|| format!("--root {}", path.display()))
            }
        }
    }

    fn policy(&self) -> anyhow::Result<Policy> {
        let mut policy = Policy::default().allow_debug(self.allow_debug);
        if let Some(path) = &self.pcrs {
            let (pcrs, format) = ExpectedPcrs::from_pcr_file(&read_limited(path, MAX_INPUT_FILE)?)
                .with_context(|| format!("--pcrs {}", path.display()))?;
            let names: Vec<_> = pcrs.iter().map(|(i, _)| format!("PCR{i}")).collect();
            // Stderr, so stdout stays one JSON answer; said before anything is
            // fetched, so a wrong file is noticed even when verification fails.
            eprintln!(
                "note: --pcrs {} read as {format}: expecting {}",
                path.display(),
                names.join(", ")
            );
            policy = policy.expected_pcrs(pcrs);
        }
        Ok(policy)
    }
}

/// Reads a file (or stdin for `-`), refusing more than `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().take(limit + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .take(limit + 1)
            .read_to_end(&mut buf)
    };
    read.with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() as u64 > limit {
        bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(buf)
}
