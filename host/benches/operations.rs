//! Reload time: `POST /reload` on the admin listener until its answer, for a proxy with five
//! example plugins and a warm compile cache, against the same proxy with no plugins, in the
//! same run (what a reload costs beyond re-reading the configuration). Prints medians and p90
//! and the ratio. `cargo bench -p wasmtp --bench operations`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use wasmtp::config::{ListenerConfig, PluginConfig};
use wasmtp::server::{BoundListener, Server};
use wasmtp_test_artifacts as wasm;

const RELOADS: usize = 30;

fn plugins() -> Vec<PluginConfig> {
    let mut stamper = PluginConfig::new("stamper", wasm::HEADER_STAMPER);
    stamper.config.insert("add".into(), toml::Value::Table(toml::toml! { "X-Filtered-By" = "wasmtp" }));
    vec![
        PluginConfig::new("ratelimit", wasm::RATE_LIMITER),
        PluginConfig::new("rewriter", wasm::ADDRESS_REWRITER),
        PluginConfig::new("guard", wasm::CONTENT_GUARD),
        stamper,
        PluginConfig::new("bouncer", wasm::SDK_EXAMPLE),
    ]
}

/// Reload times of a proxy running `config`.
async fn reload_times(config: wasmtp::Config) -> Vec<Duration> {
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let listener = BoundListener { config: ListenerConfig::smtp(smtp.local_addr().unwrap()), tcp: smtp };
    let reloaded = config.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::new(vec![listener], config)
        .with_admin(admin)
        .reloading_from(Arc::new(move || Ok(reloaded.clone())))
        .run(async {
            let _ = stopped.await;
        });
    let task = tokio::spawn(server);
    // The first reloads warm the allocator and the cache.
    let mut times = Vec::new();
    for i in 0..RELOADS + 3 {
        let started = Instant::now();
        loop {
            match wasmtp::server::admin::request_reload(admin_addr).await {
                Ok(_) => break,
                Err(err) if i == 0 && format!("{err:#}").contains("connect") => {
                    tokio::time::sleep(Duration::from_millis(20)).await // still starting
                }
                Err(err) => panic!("reload failed: {err:#}"),
            }
        }
        if i >= 3 {
            times.push(started.elapsed());
        }
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    times.sort();
    times
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mail = tempfile::tempdir().unwrap();
    let mut base = wasmtp::Config::default();
    base.sandbox.cache_dir = Some(cache.path().to_path_buf());
    base.upstream.url = Some(format!("maildir:{}", mail.path().display()).parse().unwrap());
    let with_plugins = wasmtp::Config { plugins: plugins(), ..base.clone() };
    let (none, five) = runtime.block_on(async { (reload_times(base).await, reload_times(with_plugins).await) });
    let median = |t: &[Duration]| t[t.len() / 2];
    let p90 = |t: &[Duration]| t[t.len() * 9 / 10];
    println!("load {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!("reload, no plugins:            median {:.2} ms, p90 {:.2} ms", ms(median(&none)), ms(p90(&none)));
    println!("reload, 5 plugins, cache warm: median {:.2} ms, p90 {:.2} ms", ms(median(&five)), ms(p90(&five)));
    println!("ratio 5 plugins / no plugins: {:.1}", ms(median(&five)) / ms(median(&none)));
}
