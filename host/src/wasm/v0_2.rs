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
        // Host imports return `wasmtime::Result`, so a refused host call ends the call. The
        // key-value imports are async: a shared store (Redis) is a network round trip.
        imports: {
            "wasmtp:filter/host.kv-get": async | trappable,
            "wasmtp:filter/host.kv-set": async | trappable,
            "wasmtp:filter/host.kv-incr": async | trappable,
            default: trappable,
        },
    });
}

pub use generated::Filter;
use generated::FilterPre;
use generated::wasmtp::filter::host::{Host as HostImports, KvError, Level};
use generated::wasmtp::filter::types as wit;

shared_contract!();

/// Calls the plugin's `init` with its configuration: `Ok(Err(text))` is the plugin refusing it.
pub async fn init(
    store: &mut Store<CallState>,
    plugin: &Prepared,
    config: &str,
) -> wasmtime::Result<Result<(), String>> {
    let filter = plugin.pre.instantiate_async(&mut *store).await?;
    filter.call_init(&mut *store, config).await
}

// The host interface: each import forwards to the plain-Rust host services. A refused call is
// returned as the error that ends the plugin call; the sandbox classifies it. A store that
// cannot answer, or a full quota, is a `kv-error` the plugin handles.

impl wit::Host for CallState {}

fn kv_error(error: crate::filter::kv::KvError) -> KvError {
    KvError::Unavailable(error.to_string())
}

impl HostImports for CallState {
    shared_host_imports!();

    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        Ok(self.host.kv_get(&key).await.map_err(trap)?.map_err(kv_error))
    }

    async fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), KvError>> {
        Ok(self.host.kv_set(&key, value, ttl_ms.map(Duration::from_millis)).await.map_err(trap)?.map_err(kv_error))
    }

    async fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, KvError>> {
        Ok(self.host.kv_incr(&key, delta, ttl_ms.map(Duration::from_millis)).await.map_err(trap)?.map_err(kv_error))
    }
}
