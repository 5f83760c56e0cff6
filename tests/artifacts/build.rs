//! Compiles the guest-plugins workspace for wasm32-wasip2 into OUT_DIR and writes one path
//! constant per component. Needs the wasm32-wasip2 target (scripts/setup installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guests = manifest_dir.join("../../guest-plugins").canonicalize().expect("guest-plugins exists");
    let wit = manifest_dir.join("../../wit").canonicalize().expect("wit exists");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guests");

    rerun_if_changed(&wit);
    for entry in ["Cargo.toml", "Cargo.lock", ".cargo", "sdk", "plugins", "fixtures"] {
        rerun_if_changed(&guests.join(entry));
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guests)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        // Settings meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .expect("run cargo for the guest plugins");
    assert!(
        status.success(),
        "building guest-plugins for wasm32-wasip2 failed (is the target installed? run scripts/setup)"
    );

    let release = target_dir.join("wasm32-wasip2/release");
    let mut consts = String::new();
    let mut wasm: Vec<_> = std::fs::read_dir(&release)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    wasm.sort();
    for path in wasm {
        let stem = path.file_stem().unwrap().to_string_lossy().to_uppercase().replace('-', "_");
        consts.push_str(&format!("pub const {stem}: &str = {:?};\n", path.display().to_string()));
    }
    // The Python and JavaScript plugins, built by the project's own script (componentize-py
    // and componentize-js, pinned; scripts/setup --test installs them).
    let polyglot = out_dir.join("polyglot");
    for entry in ["python", "js/external-tagger", "js/probe", "js/wasmtp-filter.js", "js/package-lock.json"] {
        rerun_if_changed(&guests.join(entry));
    }
    let script = manifest_dir.join("../../scripts/build-polyglot");
    rerun_if_changed(&script);
    let status = Command::new("bash").arg(&script).arg(&polyglot).status().expect("run scripts/build-polyglot");
    assert!(status.success(), "building the Python and JavaScript plugins failed (run scripts/setup --test)");
    for name in ["external-tagger-py", "probe-py", "external-tagger-js", "probe-js"] {
        let path = polyglot.join(format!("{name}.wasm"));
        let stem = name.to_uppercase().replace('-', "_");
        consts.push_str(&format!("pub const {stem}: &str = {:?};\n", path.display().to_string()));
    }
    std::fs::write(out_dir.join("artifacts.rs"), consts).unwrap();
}

fn rerun_if_changed(path: &Path) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap().path();
            if entry.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rerun_if_changed(&entry);
        }
    } else if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
