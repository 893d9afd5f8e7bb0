//! `nautilus-proxy`: flags → [`ProxyConfig`], then relay until SIGTERM; or
//! `nautilus-proxy logs`: print the enclave's status and log channel.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nautilus_proxy::egress::{serve_egress, Allowed, EgressConfig, EgressListen, EgressListener};
use nautilus_proxy::fd_limit::{connections_for, raise_nofile};
use nautilus_proxy::{serve, Limits, ListenAddr, ProxyConfig, SourceLimits, Upstream};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Relays TCP connections to a Nautilus enclave's vsock port, and its tasks' allowed egress out",
    after_help = "Upstreams: vsock://CID:PORT (the enclave), tcp://HOST:PORT, \
                  unix:PATH#PORT (hybrid vsock: Firecracker, vhost-device-vsock). \
                  Egress (docs/egress.md): --egress-listen vsock://3128 --egress-allow api.example.org:443",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// `tcp://IP:PORT` to accept clients on (with `--upstream`).
    #[arg(long, env = "NAUTILUS_PROXY_LISTEN", requires = "upstream")]
    listen: Option<ListenAddr>,
    /// Where each connection is relayed to.
    #[arg(long, env = "NAUTILUS_PROXY_UPSTREAM", requires = "listen")]
    upstream: Option<Upstream>,
    /// Egress mode: where the enclave's server asks for destinations with
    /// HTTP CONNECT (`vsock://3128` on the parent; `tcp://IP:PORT` in development).
    #[arg(long, env = "NAUTILUS_PROXY_EGRESS_LISTEN")]
    egress_listen: Option<EgressListen>,
    /// The only destinations egress connects to: `HOST:PORT`, or
    /// `HOST:PORT=IP` to pin the address; repeat or separate with commas.
    #[arg(long, env = "NAUTILUS_PROXY_EGRESS_ALLOW", value_delimiter = ',')]
    egress_allow: Vec<Allowed>,
    /// Egress connections relayed at once.
    #[arg(long, env = "NAUTILUS_PROXY_EGRESS_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    egress_max_connections: u32,
    /// Connections relayed at once; past this, new ones are closed at once.
    #[arg(long, env = "NAUTILUS_PROXY_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_connections: u32,
    /// Seconds to open the upstream connection.
    #[arg(long, env = "NAUTILUS_PROXY_CONNECT_TIMEOUT_SECS", default_value_t = 5,
          value_parser = secs)]
    connect_timeout_secs: u64,
    /// Seconds a new client has to send its first byte.
    #[arg(long, env = "NAUTILUS_PROXY_FIRST_BYTE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = secs)]
    first_byte_timeout_secs: u64,
    /// Seconds without a byte either way before a connection is closed; above
    /// the server's longest task (300 s) so a waiting request is not cut.
    #[arg(long, env = "NAUTILUS_PROXY_IDLE_TIMEOUT_SECS", default_value_t = 360,
          value_parser = secs)]
    idle_timeout_secs: u64,
    /// Seconds a write may stall (a side that does not read) before the
    /// connection is closed.
    #[arg(long, env = "NAUTILUS_PROXY_WRITE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = secs)]
    write_timeout_secs: u64,
    /// Seconds a client may still send after the upstream closed and all it
    /// sent was delivered; then the client's side is closed too.
    #[arg(long, env = "NAUTILUS_PROXY_UPSTREAM_EOF_LINGER_SECS", default_value_t = 1,
          value_parser = secs)]
    upstream_eof_linger_secs: u64,
    /// Connections one client address (an IPv6 /64) may have open at once.
    #[arg(long, env = "NAUTILUS_PROXY_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_connections_per_source: u32,
    /// New connections one client address may open per second on average;
    /// faster ones are closed at once.
    #[arg(long, env = "NAUTILUS_PROXY_MAX_ACCEPTS_PER_SOURCE_PER_SEC", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_accepts_per_source_per_sec: u32,
    /// New connections one client address may open at once above that rate.
    #[arg(long, env = "NAUTILUS_PROXY_ACCEPT_BURST_PER_SOURCE", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    accept_burst_per_source: u32,
    /// Connection log lines per second (five seconds' worth in a burst);
    /// past it they are counted and summed up once a second.
    #[arg(long, env = "NAUTILUS_PROXY_LOG_LINES_PER_SEC", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    log_lines_per_sec: u32,
    /// Send a PROXY protocol v2 header with the client's address first on
    /// each upstream connection, so the server's per-client limits see each
    /// client rather than the proxy. `nautilus-server` expects it by default
    /// with `--attestation nsm`; set false for a server that does not
    /// (`--attestation dev` without `--proxy-protocol true`).
    #[arg(long, env = "NAUTILUS_PROXY_PROXY_PROTOCOL", default_value_t = true,
          action = clap::ArgAction::Set)]
    proxy_protocol: bool,
    /// On SIGTERM, seconds open connections may go on before they are cut.
    #[arg(long, env = "NAUTILUS_PROXY_DRAIN_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    drain_timeout_secs: u64,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Print the enclave's status and log channel (its vsock port 3001): the
    /// backlog, then new lines as they come, until the enclave closes it or
    /// Ctrl-C. Lines starting `nautilus-status: ` say whether the server runs
    /// and, when it does not, why. Needs no debug mode.
    Logs {
        /// The channel: vsock://CID:3001 on the parent, or unix:PATH#3001.
        #[arg(long)]
        upstream: Upstream,
        /// Seconds to open the connection.
        #[arg(long, default_value_t = 5, value_parser = secs)]
        connect_timeout_secs: u64,
    },
}

/// Copies the channel to stdout until it closes.
async fn print_logs(upstream: &Upstream, connect: Duration) -> anyhow::Result<()> {
    let mut stream = upstream.connect(connect).await.with_context(|| {
        format!("could not open the enclave's status and log channel at {upstream}")
    })?;
    let mut stdout = tokio::io::stdout();
    tokio::io::copy(&mut stream, &mut stdout)
        .await
        .context("reading the status and log channel")?;
    Ok(())
}

/// A timeout of 0 would close everything; a day is far past any use.
fn secs(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=86_400).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number of seconds from 1 to 86400")),
    }
}

impl Args {
    fn config(&self, upstream: Upstream) -> ProxyConfig {
        ProxyConfig {
            upstream,
            max_connections: self.max_connections,
            limits: Limits {
                connect: Duration::from_secs(self.connect_timeout_secs),
                first_byte: Duration::from_secs(self.first_byte_timeout_secs),
                idle: Duration::from_secs(self.idle_timeout_secs),
                write: Duration::from_secs(self.write_timeout_secs),
                upstream_eof_linger: Duration::from_secs(self.upstream_eof_linger_secs),
            },
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            per_source: SourceLimits {
                max_connections: self.max_connections_per_source,
                accepts_per_sec: self.max_accepts_per_source_per_sec,
                accept_burst: self.accept_burst_per_source,
            },
            log_lines_per_sec: self.log_lines_per_sec,
            proxy_protocol: self.proxy_protocol,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Logs {
        upstream,
        connect_timeout_secs,
    }) = &args.command
    {
        return print_logs(upstream, Duration::from_secs(*connect_timeout_secs)).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // Before binding: a SIGTERM during start-up is a normal stop too.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    if let Some(addr) = args.egress_listen {
        if args.egress_allow.is_empty() {
            anyhow::bail!("--egress-listen needs --egress-allow HOST:PORT (the only destinations it may connect to)");
        }
        let listener = EgressListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on {addr} for egress"))?;
        let local = listener
            .local()
            .context("reading the bound egress address")?;
        let allow: Vec<String> = args
            .egress_allow
            .iter()
            .map(|a| format!("{}:{}", a.host, a.port))
            .collect();
        tracing::info!(listen = %local, allow = %allow.join(","), "nautilus-proxy egress ready");
        let config = EgressConfig {
            allow: args.egress_allow.clone(),
            max_connections: args.egress_max_connections,
            head_timeout: Duration::from_secs(args.first_byte_timeout_secs),
            connect_timeout: Duration::from_secs(args.connect_timeout_secs),
        };
        let egress = tokio::spawn(serve_egress(listener, config));
        if args.listen.is_none() {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            egress.abort();
            tracing::info!("stopped");
            return Ok(());
        }
    }
    let (Some(listen), Some(upstream)) = (args.listen, args.upstream.clone()) else {
        anyhow::bail!("give --listen and --upstream (the enclave's API), --egress-listen (its tasks' egress), or both");
    };
    let config = args.config(upstream);
    let (fds, raise_error) = raise_nofile();
    if let Some(e) = raise_error {
        tracing::warn!(error = %e, fds, "could not raise the descriptor limit to its hard limit");
    }
    let can_hold = connections_for(fds);
    if u64::from(config.max_connections) > can_hold {
        tracing::warn!(
            max_connections = config.max_connections,
            can_hold,
            fds,
            "--max-connections is more than the descriptor limit (RLIMIT_NOFILE) can hold, \
             two descriptors a connection: raise the hard limit (systemd: LimitNOFILE=) \
             or lower --max-connections"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen.0)
        .await
        .with_context(|| format!("could not listen on tcp://{}", listen.0))?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        listen = %format_args!("tcp://{local}"),
        upstream = %config.upstream,
        max_connections = config.max_connections,
        max_connections_per_source = config.per_source.max_connections,
        fd_limit = fds,
        can_hold,
        proxy_protocol = config.proxy_protocol,
        "nautilus-proxy ready"
    );

    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    // The first signal starts the drain; a second one exits at once.
    let signals = async move {
        let mut first_tx = Some(first_tx);
        for _ in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(());
            }
        }
    };
    tokio::select! {
        stopped = serve(listener, config, async { let _ = first_rx.await; }) => {
            tracing::info!(cut = stopped.cut, "stopped");
        }
        () = signals => tracing::warn!("second signal: exiting without waiting for open connections"),
    }
    Ok(())
}
