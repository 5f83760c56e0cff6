//! The command line: `wasmtp serve`, `wasmtp check-config`, `wasmtp reload`, the plugin
//! author's `wasmtp plugin new` and `wasmtp plugin test`, and `wasmtp replay`. `--help` is the
//! manual: it names the files, signals, environment and exit status.

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

Plugin authors:
  wasmtp plugin new NAME --lang rust|python|js   a project with ./build and ./test
  wasmtp plugin test PLUGIN.wasm --fixtures F    run it offline in the sandbox, check expectations
  wasmtp replay DIR -c F --plugin NAME=NEW.wasm  sessions recorded by [record], run again with a
                                                 new build: the decisions that differ

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
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Run recorded sessions again through the plugins and print the decisions that differ.
    ///
    /// DIR is what `[record] dir` wrote. Each session's recorded inputs (connection facts, HELO
    /// names, envelope, message, authentication results) go through the chain of --config,
    /// with --plugin NAME=PATH running a new build in place of the configured plugin NAME.
    /// Every plugin decision (verdict, reply, edits) is compared with the recorded one; those
    /// that differ are printed as `old → new`, then a summary. There is no upstream and no
    /// network, and the key-value store starts empty. Exits 1 when a decision differs.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The recordings' directory.
    dir: PathBuf,
    /// The configuration whose plugins (and their settings) to run.
    #[arg(long, short)]
    config: PathBuf,
    /// NAME=PATH: run the component at PATH as the configured plugin NAME; repeat for several.
    #[arg(long = "plugin", value_name = "NAME=PATH")]
    plugins: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Make a new plugin project that builds and tests on its own, outside this repository.
    ///
    /// Writes a working example plugin (it refuses messages whose Subject contains a
    /// configured word and stamps the others), a README, test fixtures with a sample message,
    /// a proxy configuration to try it, and two scripts: `./build` (the .wasm) and `./test`.
    /// The SDK and the plugin contract come with it, matching this wasmtp.
    New(PluginNewArgs),
    /// Run a plugin offline over test sessions and print what it decides.
    ///
    /// The plugin runs in the proxy's own sandbox, with its limits and the validation of
    /// everything it answers; there is no network and no upstream. Each case is a session:
    /// connect, EHLO, MAIL, each RCPT, DATA, as far as a client would get. Printed per stage:
    /// the verdict, the reply the client would hear, each edit, faults with what the plugin
    /// printed and its backtrace, then the message after the edits as a diff.
    ///
    /// Cases come from a fixtures file (--fixtures; see the README's plugin guide), or one per
    /// .eml file with the envelope from the flags, or one with a small sample message. Exits 1
    /// when an expectation of a fixture is not met, or the plugin cannot load.
    Test(Box<PluginTestArgs>),
}

#[derive(Debug, clap::Args)]
struct PluginNewArgs {
    /// The plugin's name: lowercase letters, digits and '-' (e.g. subject-guard).
    name: String,
    /// The language to write it in.
    #[arg(long, short, default_value = "rust")]
    lang: crate::scaffold::Language,
    /// Where to create the project (default: ./NAME); must not exist or be empty.
    #[arg(long, short)]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct PluginTestArgs {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// Messages to run through the plugin, each as one case with the envelope below.
    messages: Vec<PathBuf>,
    /// A TOML fixtures file: the plugin's settings, limits and cases with expectations.
    #[arg(long, short)]
    fixtures: Option<PathBuf>,
    /// A TOML file with the plugin's settings (its `[plugins.config]` table), instead of the
    /// fixtures file's `[config]`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The plugin's name in logs (default: the file's name without `.wasm`).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "192.0.2.1")]
    client_ip: std::net::IpAddr,
    #[arg(long, default_value = "client.example")]
    helo: String,
    /// The sender ("" for the null sender).
    #[arg(long, default_value = "sender@example.org")]
    from: String,
    /// A recipient; repeat for several.
    #[arg(long, default_values_t = ["recipient@example.net".to_string()])]
    rcpt: Vec<String>,
    /// The client used TLS.
    #[arg(long)]
    tls: bool,
    /// The client authenticated as this user.
    #[arg(long)]
    authenticated_as: Option<String>,
    /// What a fault means for the client, as the plugin's `on_error` would say.
    #[arg(long, default_value = "tempfail", value_parser = ["tempfail", "continue", "reject"])]
    on_error: String,
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
        Commands::Plugin(PluginCommand::New(args)) => plugin_new(args),
        Commands::Plugin(PluginCommand::Test(args)) => plugin_test(*args),
        Commands::Replay(args) => replay(args),
    }
}

/// `replay`: the configured chain, with the new builds in place, over every recording.
fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use crate::harness::replay::{Chains, replay};

    exit_quietly_when_stdout_closes();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let mut config = Config::load(&args.config)?;
    for swap in &args.plugins {
        let Some((name, path)) = swap.split_once('=') else {
            anyhow::bail!("--plugin {swap}: expected NAME=PATH");
        };
        let Some(plugin) = config.plugins.iter_mut().find(|p| p.name == name) else {
            let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "--plugin {swap}: {} has no plugin `{name}` (it has {})",
                args.config.display(),
                names.join(", ")
            );
        };
        plugin.path = PathBuf::from(path);
    }
    let records = crate::session::record::read_dir(&args.dir)?;
    if records.is_empty() {
        anyhow::bail!("{} holds no recordings (`[record] dir` writes <session>.json files)", args.dir.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let replayed = runtime.block_on(async {
        let (chain, _) = crate::wasm::load(&config).await?;
        replay(&Chains::new(chain, &config), &args.dir, &records).await
    })?;
    for difference in &replayed.differences {
        println!("{difference}");
    }
    println!("{}", replayed.summary());
    if !replayed.differences.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn plugin_new(args: PluginNewArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    // `./test` runs the fixtures with this binary when no wasmtp is on PATH.
    let wasmtp = std::env::current_exe().context("cannot find the path of this wasmtp binary")?;
    crate::scaffold::create(&args.name, args.lang, &dir, &wasmtp)?;
    let shown = if dir.is_relative() { Path::new(".").join(&dir) } else { dir };
    println!("created {} plugin {} in {}", args.lang, args.name, shown.display());
    println!();
    println!("  cd {}", shown.display());
    println!("  ./build     # -> {}.wasm", args.name);
    println!("  ./test      # runs its tests and the cases in fixtures.toml in the sandbox");
    println!();
    println!("Then edit the plugin, add cases to fixtures.toml, and see README.md there.");
    Ok(())
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

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not
/// when the future is first polled: the server polls it only once it is ready, and a signal
/// before then must still be a graceful stop, not the signal's default of killing the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match signals {
            Ok((mut term, mut int)) => tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            },
            Err(err) => {
                tracing::error!(error = %err, "cannot install the SIGTERM and SIGINT handlers");
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
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
    if let Some(dir) = &config.record.dir {
        check_creatable(dir).with_context(|| format!("field `record.dir`: {}", dir.display()))?;
        let record = &config.record;
        let redacted = if record.redact_bodies { ", bodies redacted" } else { "" };
        println!(
            "  record:   {} (up to {} sessions, {}{redacted})",
            dir.display(),
            record.max_sessions,
            bytesize::ByteSize(record.max_bytes.bytes()).display().iec()
        );
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

/// `plugin test`: loads the plugin alone into a chain and runs each case through it.
/// For commands that only print: a closed stdout (`| head`) ends the process quietly, as it
/// does for other command-line tools, instead of a panic in `println!`. The Rust runtime
/// ignores SIGPIPE, which `serve` wants for its sockets.
fn exit_quietly_when_stdout_closes() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called before any other thread starts; the default action installs no handler
    // code, so nothing runs in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn plugin_test(args: PluginTestArgs) -> anyhow::Result<()> {
    use crate::harness::{self, case::Case, case::Fixtures};

    exit_quietly_when_stdout_closes();

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off,wasmtp::filter::host=trace"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
    let mut fixtures = match &args.fixtures {
        Some(path) => Fixtures::load(path)?,
        None => Fixtures::default(),
    };
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        fixtures.config = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    }
    let mut cases = std::mem::take(&mut fixtures.cases);
    let from_flags = |message: Option<PathBuf>, name: String| Case {
        name,
        client_ip: args.client_ip,
        helo: args.helo.clone(),
        from: args.from.clone(),
        rcpt: args.rcpt.clone(),
        tls: args.tls,
        authenticated_as: args.authenticated_as.clone(),
        message,
        ..Case::default()
    };
    cases.extend(args.messages.iter().map(|m| from_flags(Some(m.clone()), m.display().to_string())));
    if cases.is_empty() {
        cases.push(from_flags(None, "sample message".into()));
    }

    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.plugin.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into_owned()));
    let mut plugin = crate::config::PluginConfig::new(&name, &args.plugin);
    plugin.config = fixtures.config;
    plugin.limits = fixtures.limits;
    plugin.on_error = match args.on_error.as_str() {
        "continue" => crate::config::OnError::Continue,
        "reject" => crate::config::OnError::Reject,
        _ => crate::config::OnError::Tempfail,
    };
    let config = Config { plugins: vec![plugin], ..Config::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let failed = runtime.block_on(async {
        let (chain, loaded) = crate::wasm::load(&config).await?;
        if let (Some(plugin), Some(report)) = (chain.plugins().next(), loaded.plugins.first()) {
            println!(
                "plugin {}: {} (contract {}, {} in {:.0} ms)",
                name,
                plugin.manifest,
                report.contract,
                match report.origin.name() {
                    "cache" => "loaded from the compile cache",
                    other => other,
                },
                report.elapsed.as_secs_f64() * 1000.0
            );
        }
        let mut failed = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            println!("\ncase {}/{}: {}", i + 1, cases.len(), case.name);
            let trace = harness::run(&chain, case, &format!("test-{}", i + 1))
                .await
                .with_context(|| format!("case `{}`", case.name))?;
            print!("{}", harness::report::render(&trace));
            let failures = harness::report::check(&trace, case, &name);
            if !case.expect.is_empty() {
                if failures.is_empty() {
                    println!("  ok: {} expectation(s) met", case.expect.len());
                } else {
                    println!("  FAILED:");
                    for failure in &failures {
                        println!("    {failure}");
                    }
                    failed.push(case.name.clone());
                }
            }
        }
        let checked = cases.iter().filter(|c| !c.expect.is_empty()).count();
        println!(
            "\n{} case(s), {checked} with expectations: {} passed, {} failed",
            cases.len(),
            checked - failed.len(),
            failed.len()
        );
        anyhow::Ok(failed)
    })?;
    if !failed.is_empty() {
        anyhow::bail!("{} case(s) did not meet their expectations: {}", failed.len(), failed.join(", "));
    }
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
