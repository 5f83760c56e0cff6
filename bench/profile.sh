#!/usr/bin/env bash
# Profiles the proxy with the three benchmark plugins under load, with perf: a build with frame
# pointers and wasmtime's perf map (the `profiling` feature, WASMTP_PERFMAP=1), so host frames
# have call graphs and the plugins' compiled functions have names. For each case it prints the
# share of the proxy's samples by where they ran (kernel, host, each plugin's guest code, libc)
# and the top symbols; perf.data stays in $W for `perf report -i`.
#
#   bench/profile.sh                         # c=50 5 KiB and c=10 1 MiB
#   CASES="50:5120:12000" SECONDS_PER_CASE=6 bench/profile.sh
#   BARE=1 bench/profile.sh                  # the proxy without plugins, to compare against
#   BIN=/tmp/wasmtp-old bench/profile.sh     # a given build instead (self time only)
#
# Needs linux-perf (scripts/setup --test does not install it: `apt-get install linux-perf`),
# Postfix's smtp-sink and smtp-source. The build goes to target/profiling (its own flags would
# otherwise rebuild target/release). Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export W=${W:-/tmp/wasmtp-profile}
CASES=${CASES:-"50:5120:20000 10:1048576:2000"}
SECONDS_PER_CASE=${SECONDS_PER_CASE:-5}
PORT=2549
mkdir -p "$W"
command -v perf >/dev/null || { echo "profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }

scripts/setup --test
(cd guest-plugins && cargo build --release --locked -q)
if [ -n "${BIN:-}" ]; then
  # A given build (e.g. a release binary of an older commit, to compare before and after
  # without two profiling builds): no frame pointers or perf map, so self time only; guest
  # functions are named from the compile cache's files instead.
  CALL_GRAPH=()
else
  RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=$ROOT/target/profiling \
    cargo build --release --locked -q -p wasmtp --features profiling
  BIN=$ROOT/target/profiling/release/wasmtp
  CALL_GRAPH=(--call-graph fp)
fi
GUESTS=$ROOT/guest-plugins/target/wasm32-wasip2/release

cleanup() {
  [ -f "$W/proxy.pid" ] && { kill "$(cat "$W/proxy.pid")" 2>/dev/null || true; rm -f "$W/proxy.pid"; }
  bash bench/peers.sh stop || true
}
trap cleanup EXIT
bash bench/peers.sh sink

XCLIENT_LINE="xclient = false"
# shellcheck source=bench/plugin-config.sh
source bench/plugin-config.sh
if [ "${BARE:-0}" = 1 ]; then
  plugin_config $PORT >"$W/proxy.toml"
else
  plugin_config $PORT rewriter stamper guard >"$W/proxy.toml"
fi
# With the perf map, no compile cache: code loaded from a cache file is mapped from that file,
# which perf names by the file instead of by the perf map's function names.
[ ${#CALL_GRAPH[@]} -eq 0 ] || rm -rf "$W/cache"
(WASMTP_PERFMAP=1 exec setsid "$BIN" serve --config "$W/proxy.toml" </dev/null >"$W/proxy.log" 2>&1) &
echo $! >"$W/proxy.pid"
PID=$(cat "$W/proxy.pid")
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done

for case in $CASES; do
  IFS=: read -r conc size count <<<"$case"
  smtp-source -c -s "$conc" -m 500 -l "$size" -f a@example.org -t b@example.org 127.0.0.1:$PORT >/dev/null
  smtp-source -c -s "$conc" -m "$count" -l "$size" -f a@example.org -t b@example.org 127.0.0.1:$PORT >/dev/null &
  load=$!
  perf record -q -F 999 "${CALL_GRAPH[@]}" -o "$W/perf-$conc-$size.data" -p "$PID" -- sleep "$SECONDS_PER_CASE" 2>/dev/null
  kill "$load" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  echo
  echo "## c=$conc, $((size / 1024)) KiB: self time by where it ran"
  # Guest functions are named by the perf map (JIT): module names say which plugin.
  perf report -i "$W/perf-$conc-$size.data" --no-children --sort dso,sym --stdio -q -g none -t '|' 2>/dev/null |
    python3 bench/profile_shares.py
done
