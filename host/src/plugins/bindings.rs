//! The generated host bindings for `wit/filter.wit`, kept in a private module with a curated
//! re-export (the wasmtime habit): the rest of the host names these types, never `generated`.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        exports: { default: async },
        // Host imports return `wasmtime::Result`, so a budget overrun traps the call.
        imports: { default: trappable },
    });
}

pub use generated::wasmtp::filter::host::{Host as HostImports, Level};
pub use generated::wasmtp::filter::types::{
    Address, AuthResult, AuthResults, BodyAccess, Connection, Decision, DkimCheck, DmarcCheck, DmarcPolicy, Edit,
    EditKind, Envelope, Header, HeaderChange, HeaderInsert, HeaderRef, Host as TypesHost, IprevCheck, Manifest,
    Message, Param, Reply, SpfCheck, Stage, Verdict,
};
pub use generated::{Filter, FilterPre};
