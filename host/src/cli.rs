//! The command line: `wasmtp serve` and `wasmtp check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ListenerMode, LogFormat, UpstreamUrl};

#[derive(Debug, Parser)]
#[command(name = "wasmtp", version, about = "A WebAssembly SMTP filtering proxy")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the proxy.
    Serve {
        /// TOML configuration file; without it every setting has its default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `server.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// `smtp://host:port` or `maildir:PATH` (overrides `upstream.url`).
        #[arg(long)]
        upstream: Option<UpstreamUrl>,
    },
    /// Load and validate a configuration file, then print the settings that matter.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
        /// Only check the file itself; do not compile and load the plugins it lists.
        #[arg(long)]
        no_plugins: bool,
    },
}

/// Entry point of the `wasmtp` binary.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Serve { config, listen, upstream } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if let Some(listen) = listen {
                // One smtp listener instead of the configured ones.
                config.listeners.clear();
                config.server.listen = Some(listen);
            }
            if let Some(upstream) = upstream {
                config.upstream.url = Some(upstream);
            }
            init_logging(&config);
            serve(config)
        }
        Commands::CheckConfig { file, no_plugins } => {
            let config = Config::load(&file)?;
            let upstream_note = if config.upstream.url.is_none() { " (default)" } else { "" };
            println!("{}:", file.display());
            for listener in config.listeners() {
                let what = match listener.mode {
                    ListenerMode::Smtp => "STARTTLS offered",
                    ListenerMode::Submission => "STARTTLS, then AUTH before MAIL",
                    ListenerMode::Submissions => "implicit TLS, AUTH before MAIL",
                };
                let plugins =
                    listener.plugins.as_ref().map(|p| format!("; plugins {}", p.join(","))).unwrap_or_default();
                println!("  listener: {} {} ({what}{plugins})", listener.address, listener.mode.name());
            }
            let tls = crate::tls::ServerTls::from_config(&config.tls, &config.hostname())?;
            if tls.is_self_signed() {
                println!("  tls:      self-signed certificate generated at start (opportunistic STARTTLS)");
            } else {
                println!("  tls:      {}", tls.describe().join(", "));
            }
            println!("  upstream: {}{upstream_note} (tls {:?})", config.upstream_url(), config.upstream.tls);
            println!("  hostname: {}", config.hostname());
            if let Some(auth) = crate::auth::Auth::from_config(&config.auth, &config.hostname())? {
                let signing = config.auth.sign.as_ref().map(|s| format!(", signing as {}/{}", s.domain, s.selector));
                println!(
                    "  auth:     checks {}, authserv-id {}{}",
                    if auth.checks_enabled() { "on" } else { "off" },
                    auth.authserv_id(),
                    signing.unwrap_or_default()
                );
            }
            if !no_plugins && !config.plugins.is_empty() {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let (chain, reports) = runtime.block_on(crate::wasm::load(&config))?;
                for (report, plugin) in reports.iter().zip(chain.plugins()) {
                    println!(
                        "  plugin {}: {} ({:?}, {:.1} ms)",
                        report.name,
                        plugin.manifest,
                        report.origin,
                        report.elapsed.as_secs_f64() * 1000.0
                    );
                }
            }
            println!("ok");
            Ok(())
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listeners = crate::server::bind_all(&config)?;
        crate::server::run_listeners(listeners, config, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::error!(error = %err, "cannot install the SIGTERM handler");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
