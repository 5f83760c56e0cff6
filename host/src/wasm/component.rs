//! What a plugin component asks of the host, read before it runs: how many core instances,
//! memories and tables one instantiation takes (the instance pool and each Store are sized from
//! that, so an interpreted guest with a dozen core instances gets its slots), and which of its
//! imports this host does not provide (all of them reported at once, each with a hint).

use wasmparser::{Instance, Parser, Payload, TypeRef};

/// The pool resources one instantiation of a component takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Core module instantiations.
    pub core_instances: u32,
    /// Linear memories defined by those modules.
    pub memories: u32,
    /// Tables defined by those modules.
    pub tables: u32,
    /// The most memories one module defines (1 unless it uses multi-memory).
    pub memories_per_module: u32,
    /// The most tables one module defines.
    pub tables_per_module: u32,
    /// The largest initial size of a table, in elements.
    pub table_elements: u64,
    /// The largest initial size of a memory, in octets.
    pub initial_memory: u64,
}

impl Needs {
    /// Counts from the component's binary (nested modules and components included). A module is
    /// counted once per `instantiate` of the component's core instance sections and its
    /// memories and tables once per module, which is what component toolchains emit (each core
    /// module instantiated once); wasmtime still enforces the real figures at instantiation.
    pub fn of(wasm: &[u8]) -> anyhow::Result<Self> {
        let mut needs = Needs::default();
        let (mut module_memories, mut module_tables) = (0u32, 0u32);
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e}"))? {
                Payload::Version { encoding: wasmparser::Encoding::Module, .. } => {
                    (module_memories, module_tables) = (0, 0);
                }
                Payload::InstanceSection(reader) => {
                    for instance in reader {
                        if let Instance::Instantiate { .. } = instance? {
                            needs.core_instances += 1;
                        }
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        let memory = memory?;
                        let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                        needs.memories += 1;
                        module_memories += 1;
                        needs.memories_per_module = needs.memories_per_module.max(module_memories);
                        needs.initial_memory = needs.initial_memory.max(memory.initial.saturating_mul(page));
                    }
                }
                Payload::TableSection(reader) => {
                    for table in reader {
                        needs.tables += 1;
                        module_tables += 1;
                        needs.tables_per_module = needs.tables_per_module.max(module_tables);
                        needs.table_elements = needs.table_elements.max(table?.ty.initial);
                    }
                }
                Payload::ImportSection(reader) => {
                    // An imported table is another instance's; only its size matters here.
                    for import in reader.into_imports() {
                        if let TypeRef::Table(t) = import?.ty {
                            needs.table_elements = needs.table_elements.max(t.initial);
                        }
                    }
                }
                _ => {}
            }
        }
        // A core module that is not a component counts as one instance of itself.
        needs.core_instances = needs.core_instances.max(1);
        Ok(needs)
    }
}

/// The interfaces this host links for plugins, by package and interface prefix; a version
/// `0.2.x` of WASI (wasmtime's semver matching) or a released `wasmtp:filter` version.
const PROVIDED: &[&str] = &[
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasmtp:filter/types@0.1.",
    "wasmtp:filter/host@0.1.",
    "wasmtp:filter/types@0.2.",
    "wasmtp:filter/host@0.2.",
];

/// Whether the host provides an import of this name.
fn provided(name: &str) -> bool {
    PROVIDED.iter().any(|prefix| name.starts_with(prefix))
        && (!name.starts_with("wasi:") || name.split_once('@').is_some_and(|(_, v)| v.starts_with("0.2.")))
}

/// What an import the host does not provide is for, and what to do about it.
fn hint(name: &str) -> &'static str {
    match name {
        n if n.starts_with("wasi:http/") => {
            "outgoing HTTP, which plugins do not get (componentize-js: build with `--disable http fetch-event`)"
        }
        n if n.starts_with("wasi:") && n.contains("@0.3") => "WASI 0.3, which this host does not run; target WASI 0.2",
        n if n.starts_with("wasi:") => "a WASI interface this host does not offer plugins",
        n if n.starts_with("wasmtp:filter/") => {
            "a version of the plugin contract this host does not know (it runs 0.1 and 0.2, see wit/)"
        }
        _ => "not something this host provides; plugins get only WASI 0.2 and `wasmtp:filter/host`",
    }
}

/// The component's imports this host does not provide, each with its hint, in import order.
pub fn missing_imports(component: &wasmtime::component::Component, engine: &wasmtime::Engine) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .filter(|(name, _)| !provided(name))
        .map(|(name, _)| format!("`{name}`: {}", hint(name)))
        .collect()
}

/// The version of the plugin contract a component was built for, from its imports of the
/// contract's `types` or `host` interface.
pub fn contract_version(component: &wasmtime::component::Component, engine: &wasmtime::Engine) -> Option<String> {
    component.component_type().imports(engine).find_map(|(name, _)| {
        let (interface, version) = name.split_once('@')?;
        interface.starts_with("wasmtp:filter/").then(|| version.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_what_it_provides() {
        assert!(provided("wasi:filesystem/preopens@0.2.9"));
        assert!(provided("wasi:sockets/tcp@0.2.0"));
        assert!(provided("wasmtp:filter/host@0.2.0"));
        assert!(!provided("wasi:http/outgoing-handler@0.2.3"));
        assert!(!provided("wasi:cli/environment@0.3.0"));
        assert!(!provided("wasmtp:filter/host@0.3.0"));
        assert!(hint("wasi:http/types@0.2.3").contains("--disable http"));
    }

    #[test]
    fn counts_a_core_module() {
        // (module (memory 2) (table 3 funcref))
        let wasm = [
            0, 97, 115, 109, 1, 0, 0, 0, // magic, version
            4, 4, 1, 0x70, 0, 3, // table section: one funcref table, min 3
            5, 3, 1, 0, 2, // memory section: one memory, min 2 pages
        ];
        let needs = Needs::of(&wasm).unwrap();
        assert_eq!(
            needs,
            Needs {
                core_instances: 1,
                memories: 1,
                tables: 1,
                memories_per_module: 1,
                tables_per_module: 1,
                table_elements: 3,
                initial_memory: 2 << 16
            }
        );
        assert!(Needs::of(b"not wasm").is_err());
    }
}
