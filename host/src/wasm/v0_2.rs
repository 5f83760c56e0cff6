//! `wasmtp:filter@0.2.0` (`wit/0.2.0/filter.wit`): the generated bindings, kept private, and the
//! only code that converts between them and the filter API. New in 0.2: the `init` export, and
//! key-value operations that return `result`.

use std::time::Duration;

use wasmtime::Store;

use super::sandbox::CallState;
use super::shared::{shared_contract, shared_host_imports};
use crate::auth::results as auth;
use crate::filter::api;
use crate::filter::host::{HostCallError, LogLevel};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "filter",
        exports: { default: async },
        // Host imports return `wasmtime::Result`, so a refused host call ends the call.
        imports: { default: trappable },
    });
}

use generated::wasmtp::filter::host::{Host as HostImports, KvError, Level};
use generated::wasmtp::filter::types as wit;
pub use generated::{Filter, FilterPre};

shared_contract!();

/// Calls the plugin's `init` with its configuration: `Ok(Err(text))` is the plugin refusing it.
pub async fn init(
    store: &mut Store<CallState>,
    pre: &FilterPre<CallState>,
    config: &str,
) -> wasmtime::Result<Result<(), String>> {
    let filter = pre.instantiate_async(&mut *store).await?;
    filter.call_init(&mut *store, config).await
}

// The host interface: each import forwards to the plain-Rust host services. A refused call is
// returned as the error that ends the plugin call; the sandbox classifies it. The in-process
// key-value store cannot be unavailable, so its operations always answer `Ok`.

impl wit::Host for CallState {}

impl HostImports for CallState {
    shared_host_imports!();

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        self.host.kv_get(&key).map(Ok).map_err(trap)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<Result<(), KvError>> {
        self.host.kv_set(&key, value, ttl_ms.map(Duration::from_millis)).map(Ok).map_err(trap)
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> wasmtime::Result<Result<i64, KvError>> {
        self.host.kv_incr(&key, delta, ttl_ms.map(Duration::from_millis)).map(Ok).map_err(trap)
    }
}
