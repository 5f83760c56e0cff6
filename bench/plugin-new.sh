#!/usr/bin/env bash
# Times the plugin author's path from an empty directory to a tested .wasm, per language:
# `wasmtp plugin new NAME --lang L`, then the project's `./test` (which builds it) three times —
# cold (a new project, empty pip and npm caches, an empty plugin compile cache; crates come
# from the local cargo registry if already downloaded), warm and unchanged, and warm after an
# edit of the plugin's source (so it is rebuilt and compiled again).
#
# usage: bench/plugin-new.sh [WASMTP]     (default: target/release/wasmtp, built if missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASMTP="${1:-$ROOT/target/release/wasmtp}"
if [ ! -x "$WASMTP" ]; then
    (cd "$ROOT" && cargo build --release --locked -p wasmtp)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export WASMTP XDG_CACHE_HOME="$work/cache" PIP_NO_CACHE_DIR=1 npm_config_cache="$work/npm-cache"

seconds() {
    local start=$EPOCHREALTIME
    "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
    awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }'
}

printf '%-8s %10s %14s %12s\n' language "cold (s)" "unchanged (s)" "edited (s)"
for lang in rust python js; do
    dir="$work/guard-$lang"
    "$WASMTP" plugin new "guard-$lang" --lang "$lang" --dir "$dir" >/dev/null
    cold=$(seconds "$dir/test")
    unchanged=$(seconds "$dir/test")
    case $lang in
        rust) file="$dir/src/lib.rs" ;;
        python) file="$dir/app.py" ;;
        js) file="$dir/plugin.js" ;;
    esac
    echo >>"$file"   # an edit: the component is rebuilt and compiled again
    edited=$(seconds "$dir/test")
    printf '%-8s %10.1f %14.1f %12.1f\n' "$lang" "$cold" "$unchanged" "$edited"
done
