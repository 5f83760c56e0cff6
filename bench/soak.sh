#!/usr/bin/env bash
# Soak: many messages through wasmtp with the three benchmark plugins to Postfix's smtp-sink,
# counting what was sent (smtp-source), acknowledged (the proxy's transaction lines with
# outcome "delivered") and received upstream (the sink's counter), and sampling the proxy's
# RSS every 5 seconds. Prints the counts and the RSS series; exits non-zero if they differ.
#
#   bench/soak.sh                       # 100 000 messages at c=50, 5 KiB
#   MESSAGES=20000 CONC=10 bench/soak.sh
#
# Needs postfix (smtp-sink, smtp-source; scripts/setup --test installs it). Leaves nothing
# running: every process is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export W=${W:-/tmp/wasmtp-soak}
MESSAGES=${MESSAGES:-100000}
CONC=${CONC:-50}
SIZE=${SIZE:-5120}
PORT=2544
mkdir -p "$W"
rm -f "$W/wasmtp.log" "$W/rss.csv"

scripts/setup --test
(cd guest-plugins && cargo build --release --locked -q)
cargo build --release --locked -q -p wasmtp
GUESTS=$ROOT/guest-plugins/target/wasm32-wasip2/release

cleanup() {
  [ -f "$W/wasmtp.pid" ] && kill "$(cat "$W/wasmtp.pid")" 2>/dev/null || true
  [ -f "$W/sampler.pid" ] && kill "$(cat "$W/sampler.pid")" 2>/dev/null || true
  rm -f "$W/wasmtp.pid" "$W/sampler.pid"
  bash bench/peers.sh stop || true
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

bash bench/peers.sh sink
cat >"$W/wasmtp.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
hostname = "soak.localhost"
max_connections = 20000
[upstream]
url = "smtp://127.0.0.1:2526"
[sandbox]
cache_dir = "$W/cache"
[log]
level = "info"

[[plugins]]
name = "rewriter"
path = "$GUESTS/address_rewriter.wasm"
[plugins.config]
aliases = { "b@example.org" = "b@example.com" }

[[plugins]]
name = "stamper"
path = "$GUESTS/header_stamper.wasm"
[plugins.config]
add = { "X-Filtered-By" = "wasmtp" }

[[plugins]]
name = "guard"
path = "$GUESTS/content_guard.wasm"
CONF

(exec setsid "$ROOT/target/release/wasmtp" serve --config "$W/wasmtp.toml" </dev/null >"$W/wasmtp.log" 2>&1) &
echo $! >"$W/wasmtp.pid"
pid=$(cat "$W/wasmtp.pid")
for _ in $(seq 1 150); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.2
done

# RSS every 5 s (bounded: at most 2 hours of samples).
(for i in $(seq 1 1440); do
   rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
   echo "$((i * 5)),$rss" >>"$W/rss.csv"
   sleep 5
 done) &
echo $! >"$W/sampler.pid"

sink_before=$(tail -c 400 "$W/sink.log" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
sink_before=${sink_before:-0}
started=$(date +%s)
smtp-source -s "$CONC" -m "$MESSAGES" -l "$SIZE" -f a@example.org -t b@example.org 127.0.0.1:$PORT \
  >"$W/client.log" 2>&1 || true
# The sink counts what it received; wait (bounded) until it has seen everything sent.
for _ in $(seq 1 600); do
  received=$(tail -c 400 "$W/sink.log" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
  received=$(( ${received:-0} - sink_before ))
  [ "$received" -ge "$MESSAGES" ] && break
  sleep 0.5
done
elapsed=$(( $(date +%s) - started ))
errors=$(grep -c "error" "$W/client.log" || true)
acknowledged=$(grep -c 'outcome="delivered"' "$W/wasmtp.log" || true)

echo "## Soak: $MESSAGES messages of $SIZE octets at c=$CONC through three plugins ($elapsed s)"
echo "| sent | client errors | acknowledged (250) | received upstream |"
echo "|---|---|---|---|"
echo "| $MESSAGES | $errors | $acknowledged | $received |"
echo
echo "RSS (KiB) every 5 s: $(cut -d, -f2 "$W/rss.csv" | tr '\n' ' ')"
[ "$acknowledged" -eq "$MESSAGES" ] && [ "$received" -eq "$MESSAGES" ]
