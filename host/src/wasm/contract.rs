//! Which released version of the plugin contract a component was built for, and its calls: one
//! enum over the versions' bindings, so the sandbox calls a plugin the same way whatever it
//! was built against. A version is recognised by the contract interfaces the component
//! imports (`wasmtp:filter/types@0.2.0`, …).

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::sandbox::CallState;
use super::{v0_1, v0_2};
use crate::filter::api;

/// A linked plugin, ready to be instantiated for each call.
pub enum Bindings {
    V0_1(v0_1::Prepared),
    V0_2(v0_2::Prepared),
}

impl Bindings {
    /// Checks the component's exports against the contract version its imports name (the
    /// newest one when it imports none of the contract's interfaces).
    pub fn new(pre: InstancePre<CallState>, version: Option<&str>) -> anyhow::Result<Self> {
        let bindings = match version {
            Some(v) if v.starts_with("0.1.") => v0_1::Prepared::new(pre).map(Bindings::V0_1),
            _ => v0_2::Prepared::new(pre).map(Bindings::V0_2),
        };
        bindings.map_err(|e| {
            anyhow::anyhow!(
                "the component does not export the `filter` world of wasmtp:filter@{}: {e:#}",
                version.unwrap_or("0.2.0")
            )
        })
    }

    /// The contract version, for logs.
    pub fn version(&self) -> &'static str {
        match self {
            Bindings::V0_1(_) => "0.1.0",
            Bindings::V0_2(_) => "0.2.0",
        }
    }

    /// Calls `init` with the plugin's configuration; `Ok(Err(text))` is the plugin refusing it.
    /// 0.1 plugins have no `init` and take any configuration.
    pub async fn init(&self, store: &mut Store<CallState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::V0_1(_) => Ok(Ok(())),
            Bindings::V0_2(pre) => v0_2::init(store, pre, config).await,
        }
    }

    pub async fn manifest(&self, store: &mut Store<CallState>) -> wasmtime::Result<api::Manifest> {
        match self {
            Bindings::V0_1(pre) => v0_1::manifest(store, pre).await,
            Bindings::V0_2(pre) => v0_2::manifest(store, pre).await,
        }
    }

    pub async fn call(&self, store: &mut Store<CallState>, call: &api::Call<'_>) -> wasmtime::Result<api::Decision> {
        match self {
            Bindings::V0_1(pre) => v0_1::call(store, pre, call).await,
            Bindings::V0_2(pre) => v0_2::call(store, pre, call).await,
        }
    }
}
