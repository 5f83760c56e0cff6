//! `wasmtp:filter@0.1.0` (`wit/0.1.0/filter.wit`, frozen): the generated bindings, kept
//! private, and the only code that converts between them and the filter API. Each contract
//! version has a module of its own; what they share is in [`super::shared`].

use std::time::Duration;

use wasmtime::Store;

use super::sandbox::CallState;
use super::shared::{shared_contract, shared_host_imports};
use crate::auth::results as auth;
use crate::filter::api;
use crate::filter::host::{HostCallError, LogLevel};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
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
use generated::wasmtp::filter::host::{Host as HostImports, Level};
use generated::wasmtp::filter::types as wit;

shared_contract!();

// The host interface: each import forwards to the plain-Rust host services. A refused call is
// returned as the error that ends the plugin call; the sandbox classifies it. 0.1 has no way to
// report a store that cannot answer: a read sees a miss, a write is dropped (both logged and
// counted by the host services), and a counter ends the call, so the plugin's `on_error` policy
// decides rather than a made-up count.

impl wit::Host for CallState {}

impl HostImports for CallState {
    shared_host_imports!();

    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.host.kv_get(&key).await.map_err(trap)?.unwrap_or(None))
    }

    async fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        let _dropped_when_failed =
            self.host.kv_set(&key, value, ttl_ms.map(Duration::from_millis)).await.map_err(trap)?;
        Ok(())
    }

    async fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> wasmtime::Result<i64> {
        let counted = self.host.kv_incr(&key, delta, ttl_ms.map(Duration::from_millis)).await.map_err(trap)?;
        counted.map_err(|error| trap(HostCallError::Store(error)))
    }
}
