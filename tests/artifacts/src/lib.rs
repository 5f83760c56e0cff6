//! Paths of the guest plugins and fixtures, compiled for wasm32-wasip2 by this crate's build
//! script (the wasmtime test-programs pattern): one constant per component, e.g.
//! [`HEADER_STAMPER`], holding the absolute path of its `.wasm` file.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
