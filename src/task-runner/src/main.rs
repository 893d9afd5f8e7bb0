//! `task-runner`: run one Node.js task and print its result as JSON.
//!
//! Exit status: 0 the task succeeded, 1 it ran and failed, 2 it could not be
//! run, timed out, or the command line was wrong (then stdout holds
//! `{"error": "..."}` and stderr the same sentence). `--help` and `--version`
//! print as usual and exit 0. A closed stdout does not change the status.
//! SIGINT or SIGTERM kills the task (and everything it started) first, then
//! exits 2 the same way.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use task_runner::{Runner, RunnerConfig, TaskError, TaskRequest, MAX_STDIN_BYTES};
use tokio::signal::unix::{signal, SignalKind};

/// Run a Node.js task in a sandbox and print the result as one JSON object.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Task directory, relative to --tasks-dir.
    #[arg(long, default_value = task_runner::DEFAULT_TASK_PATH)]
    task: String,
    /// Directory holding the tasks.
    #[arg(long, default_value = ".")]
    tasks_dir: PathBuf,
    /// Seconds before the task is killed (default 30, at most 300).
    #[arg(long)]
    timeout: Option<u64>,
    /// File whose content becomes the task's stdin (default: empty, end-of-file).
    #[arg(long)]
    stdin_file: Option<PathBuf>,
    /// Node.js binary (default: `node` on PATH).
    #[arg(long)]
    node: Option<PathBuf>,
    /// Where each run's code is staged: an exec-capable file system, as root
    /// not inside /tmp or another directory others can write (default: as
    /// root /var/lib/nautilus-task-runner, else the temp directory).
    #[arg(long, env = "NAUTILUS_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Name of an environment variable to pass through to the task (repeatable).
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// Arguments passed to the task.
    #[arg(last = true)]
    args: Vec<String>,
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(test)]
mod cli_tests;

/// The test build (`cargo test --bin task-runner`): run the CLI's tests, or
/// be the CLI for one of them.
#[cfg(test)]
fn main() -> ExitCode {
    if std::env::var_os(cli_tests::RUN_AS_CLI).is_some() {
        return cli_main();
    }
    let args = libtest_mimic::Arguments::from_args();
    libtest_mimic::run(&args, cli_tests::trials()).exit_code()
}

#[cfg(not(test))]
fn main() -> ExitCode {
    cli_main()
}

fn cli_main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: what the user asked for, on stdout.
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => return fail(&usage_error(&err)),
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => fail(&format!("{err:#}")),
    }
}

/// The one-line reason of a command-line error, e.g. `unexpected argument
/// '--bogus' found; see --help` (clap's own text adds a tip and the usage on
/// further lines).
fn usage_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let reason = first.strip_prefix("error: ").unwrap_or(first).trim();
    format!("{reason}; see --help")
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Installed first: from here on a SIGINT/SIGTERM kills the task instead of
    // leaving it to run on.
    let terminated = terminated()?;
    // Before the runner's start-up checks (the tasks directory must belong to
    // root, …): a task that is not there is reported as such, not as a fault
    // of whatever directory it was looked for in.
    if let Ok(path) = task_runner::normalize_task_path(&cli.task) {
        if !cli.tasks_dir.join(&path).is_dir() {
            let code = fail(&TaskError::TaskDirMissing(path).to_string());
            let dir = std::fs::canonicalize(&cli.tasks_dir).unwrap_or(cli.tasks_dir);
            let _ = writeln!(
                std::io::stderr(),
                "(looked in {}: run from the directory that holds the tasks, or pass --tasks-dir)",
                dir.display()
            );
            return Ok(code);
        }
    }
    let stdin = cli.stdin_file.as_deref().map(read_stdin_file).transpose()?;
    let config = RunnerConfig {
        tasks_dir: cli.tasks_dir,
        node: cli.node,
        pass_env: cli.pass_env,
        work_dir: cli.work_dir,
        max_concurrent: 1,
        // One run: a warm box would only be started and thrown away.
        warm_pool: Some(0),
        ..RunnerConfig::default()
    };
    let runner = Runner::new(config)?;
    let request = TaskRequest {
        task_path: cli.task,
        timeout_secs: cli.timeout,
        args: cli.args,
        stdin,
    };
    let run = runner.run(request);
    tokio::pin!(run);
    let outcome = tokio::select! {
        outcome = &mut run => outcome,
        () = terminated => {
            // Kill the task at once; the run then ends with ShuttingDown.
            runner.shutdown(Duration::ZERO).await;
            run.await
        }
    };
    match outcome {
        Ok(result) => {
            print_line(&serde_json::to_string(&result)?).context("writing the result")?;
            Ok(if result.status == "success" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(err) => Ok(fail(&err.to_string())),
    }
}

/// Reads the task's stdin from `path`: at most [`MAX_STDIN_BYTES`], UTF-8.
/// Reading stops one byte past the limit, so `/dev/zero` or a huge file
/// costs no more than that; a FIFO is read like any stream (until its writer
/// closes it), as a user naming one would expect.
fn read_stdin_file(path: &Path) -> anyhow::Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > MAX_STDIN_BYTES {
        anyhow::bail!(
            "{} holds more than {MAX_STDIN_BYTES} bytes, the limit for a task's stdin",
            path.display()
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Resolves on the first SIGINT or SIGTERM.
fn terminated() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Reports that the task could not be run: exit status 2, `{"error": ...}` on
/// stdout, the sentence on stderr.
fn fail(message: &str) -> ExitCode {
    // Nothing is left to report a failure of these writes to.
    let _ = print_line(&serde_json::json!({ "error": message }).to_string());
    let _ = writeln!(std::io::stderr(), "{message}");
    ExitCode::from(2)
}

/// Writes `line` to stdout. A reader that went away (`task-runner ... | head
/// -c 10`) is no error: the exit status still tells the outcome.
fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}
