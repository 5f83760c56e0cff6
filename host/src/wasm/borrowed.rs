//! Borrowed forms of the contract's `message` record, lowered into a guest straight from the
//! host's data.
//!
//! bindgen's records own their strings and lists, so handing a plugin a message through them
//! copied the body and every header field once per plugin, before the canonical ABI copied them
//! again into the guest's memory: at 1 MiB, a megabyte copied per body-reading plugin for
//! nothing. These records are type-checked against the same WIT records (by field name and
//! type, when the plugin is loaded: `StageExports` in `shared.rs`), so a contract change that
//! they no longer match refuses the plugin at load rather than lowering the wrong shape. The
//! record is unchanged between the contract versions, so one definition serves both.

use wasmtime::component::{ComponentType, Lower};

use crate::filter::api;

/// `record header { name: string, value: string }`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct Header<'a> {
    name: &'a str,
    value: &'a str,
}

/// `record message { headers, body, body-truncated, size }`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct Message<'a> {
    headers: Vec<Header<'a>>,
    body: Option<&'a [u8]>,
    #[component(name = "body-truncated")]
    body_truncated: bool,
    size: u64,
}

impl<'a> Message<'a> {
    /// The message as the filter API hands it to a plugin, borrowed.
    pub fn new(m: &api::Message<'a>) -> Self {
        let headers =
            m.headers.map_or_else(Vec::new, |h| h.iter().map(|f| Header { name: &f.name, value: &f.value }).collect());
        Message { headers, body: m.body, body_truncated: m.body_truncated, size: m.size }
    }
}
