//! The on-disk cache of compiled plugins, so a restart loads native code in about 0.1 ms
//! instead of compiling for about 50 ms per plugin.
//!
//! Loading precompiled code is `unsafe` in wasmtime because a crafted file is arbitrary native
//! code. The cache therefore only loads files from a directory the proxy owns (mode 0700, owned
//! by our user), named by sha256(wasm) + wasmtime version + the engine's compatibility hash, and
//! written there by the proxy itself. Anything else is recompiled.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const WASMTIME_VERSION: &str = "48.0.8";

/// Where compiled plugins live; `None` disables caching.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

/// How a component was obtained, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Cache => "cache",
            Origin::Compiled => "compiled",
        }
    }
}

impl CompileCache {
    /// Uses `dir`, or the user's cache directory when `None`. An unusable directory disables
    /// the cache with a warning.
    pub fn open(dir: Option<&Path>) -> Self {
        let dir = dir.map(Path::to_path_buf).or_else(default_dir);
        let dir = dir.and_then(|dir| match prepare(&dir) {
            Ok(()) => Some(dir),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "plugin compile cache disabled");
                None
            }
        });
        Self { dir }
    }

    /// Loads the compiled form of `wasm` from the cache, or compiles and stores it.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<(Component, Origin)> {
        let Some(dir) = &self.dir else {
            return Ok((compile(engine, wasm)?, Origin::Compiled));
        };
        let path = dir.join(format!("{}.cwasm", key(engine, wasm)));
        if path.exists() {
            // SAFETY: the file is in a directory only our user can write (checked by `prepare`)
            // and is named by the hash of the wasm and of the engine configuration, so it is
            // exactly what this proxy compiled from these bytes with this engine.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, Origin::Cache)),
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "ignoring unusable cache entry"),
            }
        }
        let component = compile(engine, wasm)?;
        if let Err(err) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %err, "cannot write plugin compile cache");
        }
        Ok((component, Origin::Compiled))
    }
}

fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Component> {
    Component::new(engine, wasm).map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// `$XDG_CACHE_HOME/wasmtp` or `~/.cache/wasmtp` (a proxy that drops privileges gets
/// `/var/cache/wasmtp` from the configuration instead).
fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasmtp"))
}

/// Creates the directory (0700) or checks that an existing one is ours and private.
fn prepare(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other("directory is not private to this user"));
    }
    Ok(())
}

fn key(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut sha = Sha256::new();
    sha.update(wasm);
    sha.update(WASMTIME_VERSION.as_bytes());
    sha.update(hasher.finish().to_le_bytes());
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes atomically: a private temporary file, then rename.
fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
