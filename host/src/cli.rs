//! The command line: `wasmtp serve` and `wasmtp check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, UpstreamUrl};

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
                config.server.listen = listen;
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
            println!("{}: ok", file.display());
            println!("  listen:   {}", config.server.listen);
            println!("  upstream: {}{upstream_note}", config.upstream_url());
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
            if no_plugins || config.plugins.is_empty() {
                return Ok(());
            }
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
        let listener = crate::server::bind(config.server.listen)
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        crate::server::run(listener, config, shutdown_signal()).await
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
