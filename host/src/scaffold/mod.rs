//! `wasmtp plugin new`: a standalone plugin project in Rust, Python or JavaScript that builds
//! with `./build` and tests with `./test`, outside this repository, on a machine that has only
//! the language's usual tools.
//!
//! Everything a project needs from this repository — the Rust SDK, the Python and JavaScript
//! helper modules, the contract (`wit/0.2.0/filter.wit`), the lock files and the pinned tool
//! versions — is compiled into the binary from the repository's own files, so a project always
//! matches the proxy that made it. The templates are in `templates/`; `{{key}}` marks what is
//! filled in.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The languages a plugin project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
    Js,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        })
    }
}

/// componentize-py, pinned as `scripts/build-polyglot` pins it (a unit test keeps them equal).
const COMPONENTIZE_PY_VERSION: &str = "0.25.0";
/// wit-bindgen, pinned as the guest workspace pins it (a unit test keeps them equal).
const WIT_BINDGEN_VERSION: &str = "0.61.1";

const CONTRACT: &str = include_str!("../../../wit/0.2.0/filter.wit");

mod template {
    pub const README: &str = include_str!("templates/README.md.tmpl");
    pub const FIXTURES: &str = include_str!("templates/fixtures.toml");
    pub const SAMPLE: &str = include_str!("templates/sample.eml");
    pub const GITIGNORE: &str = include_str!("templates/gitignore");
    pub const PROXY_CONFIG: &str = include_str!("templates/wasmtp.toml");
    pub const FIND_WASMTP: &str = include_str!("templates/find-wasmtp.sh");

    pub mod rust {
        pub const CARGO_TOML: &str = include_str!("templates/rust/Cargo.toml.tmpl");
        pub const LIB_RS: &str = include_str!("templates/rust/lib.rs.tmpl");
        pub const BUILD: &str = include_str!("templates/rust/build");
        pub const TEST: &str = include_str!("templates/rust/test");
        pub const SDK_CARGO_TOML: &str = include_str!("templates/rust/sdk-Cargo.toml.tmpl");
        pub const SDK_LIB_RS: &str = include_str!("../../../guest-plugins/sdk/src/lib.rs");
        pub const SDK_EXAMPLE: &str = include_str!("../../../guest-plugins/fixtures/sdk-example/src/lib.rs");
        /// The guest workspace's lock: the new project starts from the versions tested here.
        pub const CARGO_LOCK: &str = include_str!("../../../guest-plugins/Cargo.lock");
    }

    pub mod python {
        pub const APP: &str = include_str!("templates/python/app.py");
        pub const BUILD: &str = include_str!("templates/python/build");
        pub const TEST: &str = include_str!("templates/python/test");
        pub const HELPER: &str = include_str!("../../../guest-plugins/python/wasmtp_filter.py");
    }

    pub mod js {
        pub const PLUGIN: &str = include_str!("templates/js/plugin.js");
        pub const BUILD: &str = include_str!("templates/js/build");
        pub const TEST: &str = include_str!("templates/js/test");
        pub const HELPER: &str = include_str!("../../../guest-plugins/js/wasmtp-filter.js");
        pub const PACKAGE_JSON: &str = include_str!("../../../guest-plugins/js/package.json");
        pub const PACKAGE_LOCK: &str = include_str!("../../../guest-plugins/js/package-lock.json");
        /// The package name in the two files above, replaced by the plugin's.
        pub const PACKAGE_NAME: &str = "wasmtp-js-plugins";
    }
}

/// The line of the SDK that includes its documentation example from the repository; a
/// vendored copy carries the example inline instead.
const SDK_EXAMPLE_INCLUDE: &str = "#![doc = include_str!(\"../../fixtures/sdk-example/src/lib.rs\")]";

/// One file of a new project, relative to its directory.
#[derive(Debug)]
pub struct ProjectFile {
    pub path: &'static str,
    pub text: String,
    pub executable: bool,
}

/// Checks a plugin name: it names the project directory, the package, the `.wasm` file and
/// the plugin in the proxy's configuration, so it is kept to what all of those accept.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name {name:?}: use lowercase letters, digits and single '-' between them, starting with a \
             letter, at most 64 characters (e.g. \"subject-guard\")"
        );
    }
    // Names cargo refuses for a package, or that would shadow a crate every build uses.
    const TAKEN: &[&str] = &["test", "core", "std", "alloc", "proc-macro", "self", "crate", "super", "wasmtp-plugin"];
    if TAKEN.contains(&name) {
        bail!("plugin name {name:?} is taken by a Rust crate every plugin build uses; choose another");
    }
    Ok(())
}

/// The files of a new project. `wasmtp` is the binary the project's `./test` falls back to
/// when no `wasmtp` is on PATH.
pub fn files(name: &str, language: Language, wasmtp: &Path) -> Vec<ProjectFile> {
    let fill = |text: &str| fill(text, name, language, wasmtp);
    let file = |path, text: String| ProjectFile { path, text, executable: false };
    let script = |path, text: &str| ProjectFile { path, text: fill(text), executable: true };
    let mut files = vec![
        file("README.md", fill(template::README)),
        file("fixtures.toml", fill(template::FIXTURES)),
        file("sample.eml", template::SAMPLE.to_string()),
        file("wasmtp.toml", fill(template::PROXY_CONFIG)),
        file(".gitignore", fill(template::GITIGNORE)),
        file("wit/filter.wit", CONTRACT.to_string()),
    ];
    match language {
        Language::Rust => files.extend([
            file("Cargo.toml", fill(template::rust::CARGO_TOML)),
            file("Cargo.lock", template::rust::CARGO_LOCK.to_string()),
            file("src/lib.rs", fill(template::rust::LIB_RS)),
            script("build", template::rust::BUILD),
            script("test", template::rust::TEST),
            file("wasmtp-plugin/Cargo.toml", fill(template::rust::SDK_CARGO_TOML)),
            file("wasmtp-plugin/src/lib.rs", vendored_sdk()),
            file("wasmtp-plugin/wit/filter.wit", CONTRACT.to_string()),
        ]),
        Language::Python => files.extend([
            file("app.py", fill(template::python::APP)),
            file("wasmtp_filter.py", template::python::HELPER.to_string()),
            script("build", template::python::BUILD),
            script("test", template::python::TEST),
        ]),
        Language::Js => {
            let package = |text: &str| {
                text.replace(&format!("\"name\": \"{}\"", template::js::PACKAGE_NAME), &format!("\"name\": \"{name}\""))
            };
            files.extend([
                file("plugin.js", fill(template::js::PLUGIN)),
                file("wasmtp-filter.js", template::js::HELPER.to_string()),
                file("package.json", package(template::js::PACKAGE_JSON)),
                file("package-lock.json", package(template::js::PACKAGE_LOCK)),
                script("build", template::js::BUILD),
                script("test", template::js::TEST),
            ]);
        }
    }
    files
}

/// Writes a new project into `dir`, which must not exist or be empty. Returns the files written.
pub fn create(name: &str, language: Language, dir: &Path, wasmtp: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).with_context(|| format!("{} is not a directory", dir.display()))?;
        if entries.next().is_some() {
            bail!("{} already exists and is not empty; choose another --dir", dir.display());
        }
    }
    let created = !dir.exists();
    let written = write_all(dir, files(name, language, wasmtp));
    if written.is_err() && created {
        // Leave nothing half-made behind.
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

fn write_all(dir: &Path, files: Vec<ProjectFile>) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, &file.text).with_context(|| format!("cannot write {}", path.display()))?;
        if file.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
        written.push(path);
    }
    Ok(written)
}

/// The SDK's source with its documentation example inline.
fn vendored_sdk() -> String {
    let example: String = template::rust::SDK_EXAMPLE.lines().map(|line| format!("//! {line}\n")).collect();
    template::rust::SDK_LIB_RS.replace(&format!("{SDK_EXAMPLE_INCLUDE}\n"), &example)
}

fn fill(text: &str, name: &str, language: Language, wasmtp: &Path) -> String {
    let (test_what, needs, files) = match language {
        Language::Rust => (
            "cargo test (native, with the SDK's mock host), then the fixtures in the sandbox",
            "Needs rustup and cargo; `./build` adds the `wasm32-wasip2` target. The first build fetches \
             the crates (serde, wit-bindgen) from crates.io.",
            "- `src/lib.rs`: the plugin, and its native unit tests (`wasmtp_plugin::testing::MockHost`\n  \
             stands in for the proxy: configuration, notes, the key-value store, captured logs).\n\
             - `wasmtp-plugin/`: the Rust SDK, vendored with the contract it was written for.",
        ),
        Language::Python => (
            "builds, then runs the fixtures in the sandbox",
            "Needs python3 with venv; the first `./build` installs the pinned componentize-py into \
             `.tools/venv` from PyPI. `./build` does nothing while the .wasm is newer than every \
             source (`./build --force` rebuilds).",
            "- `app.py`: the plugin (`class WitWorld(wasmtp_filter.Plugin)`). Import modules at the top:\n  \
             the module runs at build time, and the component is a snapshot taken after the import.\n\
             - `wasmtp_filter.py`: the helper module over the generated bindings.",
        ),
        Language::Js => (
            "builds, then runs the fixtures in the sandbox",
            "Needs node and npm; the first `./build` installs the pinned componentize-js into \
             `node_modules` with `npm ci`. `./build` does nothing while the .wasm is newer than every \
             source (`./build --force` rebuilds).",
            "- `plugin.js`: the plugin (`wf.definePlugin({...})`). Its top level runs at build time, and\n  \
             the component is a snapshot taken after it: do not call the host there.\n\
             - `wasmtp-filter.js`: the helper module over the generated bindings.",
        ),
    };
    text.replace("{{find_wasmtp}}", template::FIND_WASMTP.trim_end())
        .replace("{{test_what}}", test_what)
        .replace("{{needs}}", needs)
        .replace("{{files}}", files)
        .replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{language}}", &language.to_string())
        .replace("{{wasmtp}}", &shell_quote(&wasmtp.to_string_lossy()))
        .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION)
        .replace("{{wit_bindgen}}", WIT_BINDGEN_VERSION)
        .replace("{{sdk_version}}", env!("CARGO_PKG_VERSION"))
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["subject-guard", "a", "filter2", "x-1-y"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Subject", "1st", "-a", "a-", "a--b", "a_b", "a b", "../x", "test", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            for file in files("my-filter", language, Path::new("/opt/it's/wasmtp")) {
                assert!(!file.text.contains("{{"), "{language} {}: {}", file.path, file.text);
            }
        }
    }

    #[test]
    fn the_vendored_sdk_carries_its_example_inline() {
        let sdk = vendored_sdk();
        assert!(!sdk.contains("include_str!"), "the vendored SDK still includes a file of this repository");
        assert!(sdk.contains("//! impl Filter for Bouncer {"));
    }

    #[test]
    fn pins_match_the_repository() {
        let polyglot = include_str!("../../../scripts/build-polyglot");
        assert!(polyglot.contains(&format!("COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}\n")));
        let guests = include_str!("../../../guest-plugins/Cargo.toml");
        assert!(guests.contains(&format!("wit-bindgen = \"{WIT_BINDGEN_VERSION}\"")));
        // The JS package files name the package in exactly the places replaced.
        assert_eq!(template::js::PACKAGE_JSON.matches(template::js::PACKAGE_NAME).count(), 1);
        assert_eq!(template::js::PACKAGE_LOCK.matches(template::js::PACKAGE_NAME).count(), 2);
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
