# The wasmtp that runs the fixtures: $WASMTP, else `wasmtp` on PATH, else the one that made
# this project.
wasmtp="${WASMTP:-$(command -v wasmtp || true)}"
[ -n "$wasmtp" ] || wasmtp={{wasmtp}}
if [ ! -x "$wasmtp" ]; then
    echo "test: wasmtp not found; put it on PATH or set WASMTP=/path/to/wasmtp" >&2
    exit 1
fi
