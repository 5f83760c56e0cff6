//! The command line: `wasmtp serve`, `wasmtp check-config` and `wasmtp reload`. `--help`
//! is the manual: it names the files, signals, environment and exit status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ListenerMode, LogFormat, UpstreamUrl};
use crate::server::{ConfigLoader, Server, privileges};

const ABOUT: &str = "A WebAssembly SMTP filtering proxy";

const LONG_ABOUT: &str = "\
wasmtp listens for SMTP clients in front of a mail server, runs the SMTP session itself and, at
each stage (connect, EHLO, MAIL, RCPT, DATA), calls sandboxed WebAssembly filter plugins that
accept, reject, tempfail or rewrite. It relays to the upstream in lockstep: a client hears 250
only after the upstream said 250. Without an upstream it delivers into a Maildir.";

const AFTER_HELP: &str = "\
Configuration:
  One TOML file (see examples/quickstart.toml and the README). Unknown fields are errors;
  `wasmtp check-config FILE` checks everything `serve` needs and prints `ok` last.

Signals:
  SIGHUP          reload the configuration, plugins and certificates. New sessions get the new
                  configuration; sessions in flight finish on theirs. A reload that fails
                  changes nothing. Listener addresses and connection limits need a restart.
  SIGTERM, SIGINT stop accepting, let sessions finish within timeouts.shutdown_grace, then
                  answer the rest 421 and exit 0.

Admin endpoints ([admin] listen = \"127.0.0.1:9025\"):
  GET /metrics (Prometheus text), GET /healthz, GET /readyz, POST /reload.

Environment:
  RUST_LOG        log filter, overriding log.level (e.g. `wasmtp=debug`)
  NOTIFY_SOCKET   set by systemd: readiness, reloads and stopping are reported (Type=notify-reload)
  XDG_CACHE_HOME, HOME  where the plugin compile cache goes unless sandbox.cache_dir is set

Exit status:
  0 after a clean shutdown or a successful check; 1 on any error, with the reason on stderr.";

#[derive(Debug, Parser)]
#[command(name = "wasmtp", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the proxy.
    ///
    /// Binds every listener, loads the plugins, drops privileges (server.user), then serves
    /// until SIGTERM. Logs go to stderr.
    Serve {
        /// TOML configuration file; without it every setting has its default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on (one smtp listener, instead of the configured ones).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// `smtp://host:port` or `maildir:PATH` (overrides `upstream.url`).
        #[arg(long)]
        upstream: Option<UpstreamUrl>,
    },
    /// Check a configuration file the way `serve` would use it, then print what matters.
    ///
    /// Checks the file, the TLS certificates, the spool directory, the user to run as, and
    /// loads every plugin (unless --no-plugins). Prints `ok` last, only when all passed;
    /// otherwise exits 1 naming the field at fault.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
        /// Only check the file itself; do not compile and load the plugins it lists.
        #[arg(long)]
        no_plugins: bool,
    },
    /// Ask a running proxy to reload its configuration.
    ///
    /// Through the admin listener when the configuration has `[admin] listen` (waits for the
    /// outcome and exits 1 if the reload failed), else by sending SIGHUP to the process in
    /// `server.pid_file` (the log says how it went).
    Reload {
        /// The running proxy's configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Entry point of the `wasmtp` binary.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Serve { config, listen, upstream } => {
            let loader = config_loader(config, listen, upstream);
            let config = loader()?;
            init_logging(&config);
            serve(config, loader)
        }
        Commands::CheckConfig { file, no_plugins } => check_config(&file, no_plugins),
        Commands::Reload { config } => reload(&config),
    }
}

/// Reads the configuration file (or the defaults) with the command line's overrides; reloads
/// read it the same way.
fn config_loader(path: Option<PathBuf>, listen: Option<SocketAddr>, upstream: Option<UpstreamUrl>) -> ConfigLoader {
    Arc::new(move || {
        let mut config = match &path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(listen) = listen {
            // One smtp listener instead of the configured ones.
            config.listeners.clear();
            config.server.listen = Some(listen);
        }
        if let Some(upstream) = &upstream {
            config.upstream.url = Some(upstream.clone());
        }
        Ok(config)
    })
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

fn serve(config: Config, loader: ConfigLoader) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listeners = crate::server::bind_all(&config)?;
        let mut server = Server::new(listeners, config.clone()).reloading_from(loader);
        if let Some(admin) = crate::server::bind_admin(&config)? {
            server = server.with_admin(admin);
        }
        server.run(shutdown_signal()).await
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

/// `check-config`: everything `serve` would need, each failure naming its field; `ok` last.
fn check_config(file: &Path, no_plugins: bool) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!("{}:", file.display());
    for listener in config.listeners() {
        let what = match listener.mode {
            ListenerMode::Smtp => "STARTTLS offered",
            ListenerMode::Submission => "STARTTLS, then AUTH before MAIL",
            ListenerMode::Submissions => "implicit TLS, AUTH before MAIL",
        };
        let plugins = listener.plugins.as_ref().map(|p| format!("; plugins {}", p.join(","))).unwrap_or_default();
        println!("  listener: {} {} ({what}{plugins})", listener.address, listener.mode.name());
    }
    if let Some(admin) = config.admin.listen {
        println!("  admin:    http://{admin}/metrics, /healthz, /readyz, POST /reload");
    }
    let tls = crate::tls::ServerTls::from_config(&config.tls, &config.hostname())?;
    if tls.is_self_signed() {
        println!("  tls:      self-signed certificate generated at start (opportunistic STARTTLS)");
    } else {
        println!("  tls:      {}", tls.describe().join(", "));
    }
    let upstream_note = if config.upstream.url.is_none() { " (default)" } else { "" };
    let url = config.upstream_url();
    if let UpstreamUrl::Maildir(path) = &url {
        check_creatable(path).with_context(|| format!("field `upstream.url`: Maildir {}", path.display()))?;
    }
    println!("  upstream: {url}{upstream_note} (tls {})", config.upstream.tls.name());
    println!("  hostname: {}", config.hostname());
    match &config.server.spool_dir {
        Some(spool) => {
            privileges::check_writable(spool)
                .with_context(|| format!("field `server.spool_dir`: {}", spool.display()))?;
            println!("  spool:    {}", spool.display());
        }
        None => println!("  spool:    {} (system temp directory)", std::env::temp_dir().display()),
    }
    if let Some(identity) = privileges::configured(&config)? {
        println!("  runs as:  {} (uid {}, gid {}) after binding", identity.user, identity.uid, identity.gid);
    }
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
        let (chain, loaded) = runtime.block_on(crate::wasm::load(&config))?;
        for (report, plugin) in loaded.plugins.iter().zip(chain.plugins()) {
            let shadow = if plugin.mode == crate::config::PluginMode::Shadow { " [shadow]" } else { "" };
            println!(
                "  plugin {}{shadow}: {} (from {}, {:.1} ms)",
                report.name,
                plugin.manifest,
                report.origin.name(),
                report.elapsed.as_secs_f64() * 1000.0
            );
        }
        if let Some(allocation) = loaded.allocation {
            println!("  memory:   {allocation}");
        }
    }
    println!("ok");
    Ok(())
}

/// A directory that exists and is writable, or can be created.
fn check_creatable(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return privileges::check_writable(path);
    }
    let parent = path.ancestors().skip(1).find(|p| p.exists()).unwrap_or(Path::new("."));
    privileges::check_writable(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })
        .with_context(|| format!("cannot be created in {}", parent.display()))
}

/// `reload`: through the admin listener, else SIGHUP to the pid file's process. Only those two
/// settings are read here, so a file with a mistake elsewhere still reaches the proxy, which
/// says what is wrong with it.
fn reload(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not TOML", file.display()))?;
    let setting = |section: &str, key: &str| table.get(section)?.get(key)?.as_str().map(str::to_string);
    if let Some(admin) = setting("admin", "listen") {
        let addr: SocketAddr =
            admin.parse().with_context(|| format!("field `admin.listen`: `{admin}` is not ip:port"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let answer = runtime.block_on(crate::server::admin::request_reload(addr))?;
        println!("{answer}");
        return Ok(());
    }
    let Some(pid_file) = setting("server", "pid_file").map(PathBuf::from) else {
        anyhow::bail!(
            "{}: set `admin.listen` or `server.pid_file` so `wasmtp reload` can reach the proxy",
            file.display()
        );
    };
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("field `server.pid_file`: cannot read {}", pid_file.display()))?;
    let pid: i32 = text.trim().parse().with_context(|| format!("{}: not a process id", pid_file.display()))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP)
        .with_context(|| format!("cannot signal process {pid} (from {})", pid_file.display()))?;
    println!("sent SIGHUP to process {pid}; its log says how the reload went");
    Ok(())
}
