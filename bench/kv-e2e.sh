#!/usr/bin/env bash
# End-to-end cost of sharing plugin state: wasmtp with the example rate limiter on the embedded
# key-value store against the same proxy with the store in a private redis-server on loopback,
# measured back to back in one run through bench/peers.sh (smtp-source -> proxy -> smtp-sink).
# Every message from smtp-source comes from 127.0.0.1, so all of them count on one Redis key:
# the worst case for contention. Prints figures and the ratio redis / embedded; never fails on
# them. The Redis server's own CPU is not in the proxy's CPU column (it is printed apart).
#
#   bench/kv-e2e.sh                      # REPS=3, c=50 5 KiB
#   REPS=1 CASES="10:5120:2000" bench/kv-e2e.sh
#
# Needs postfix (smtp-sink, smtp-source) and redis-server (scripts/setup --test installs both).
# Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export W=${W:-/tmp/wasmtp-kv-bench}
export REPS=${REPS:-3}
export CASES=${CASES:-"50:5120:5000"}
export TAG=${TAG:-kv-$(date +%Y%m%d-%H%M%S)}
export RESULTS=${RESULTS:-$W/results.csv}
THIS_BIN=${THIS_BIN:-$ROOT/target/release/wasmtp}
MEMORY_PORT=2550
REDIS_KV_PORT=2551
REDIS_PORT=${REDIS_PORT:-6391}
mkdir -p "$W"

scripts/setup --test
(cd guest-plugins && cargo build --release --locked -q)
cargo build --release --locked -q -p wasmtp
GUESTS=$ROOT/guest-plugins/target/wasm32-wasip2/release

ulimit -n 65536 2>/dev/null || true
cleanup() {
  for f in kv_memory kv_redis redis; do
    if [ -f "$W/$f.pid" ]; then kill "$(cat "$W/$f.pid")" 2>/dev/null || true; rm -f "$W/$f.pid"; fi
  done
  bash bench/peers.sh stop || true
}
trap cleanup EXIT
bash bench/peers.sh sink

redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --dir "$W" >"$W/redis.log" 2>&1 &
echo $! >"$W/redis.pid"
for _ in $(seq 1 100); do redis-cli -p $REDIS_PORT PING >/dev/null 2>&1 && break; sleep 0.1; done

config() { # port [kv backend]
  cat <<CONF
[server]
listen = "127.0.0.1:$1"
hostname = "bench.localhost"
max_connections = 20000
[upstream]
url = "smtp://127.0.0.1:2526"
xclient = false
[sandbox]
cache_dir = "$W/cache"
[log]
level = "warn"
${2:+[kv]
backend = \"$2\"}

[[plugins]]
name = "ratelimit"
path = "$GUESTS/rate_limiter.wasm"
[plugins.config]
limit = 1000000000
window_secs = 3600
CONF
}
config $MEMORY_PORT >"$W/kv_memory.toml"
config $REDIS_KV_PORT "redis://127.0.0.1:$REDIS_PORT" >"$W/kv_redis.toml"

start_wasmtp() { # name config port
  (exec setsid "$THIS_BIN" serve --config "$2" --listen "127.0.0.1:$3" </dev/null >"$W/$1.log" 2>&1) &
  echo $! >"$W/$1.pid"
  local i
  for i in $(seq 1 150); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$3") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  cat "$W/$1.log" >&2
  return 1
}
start_wasmtp kv_memory "$W/kv_memory.toml" $MEMORY_PORT
start_wasmtp kv_redis "$W/kv_redis.toml" $REDIS_KV_PORT

redis_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$(cat "$W/redis.pid")/stat"; }
before=$(redis_cpu)
TARGETS="kv_memory:$MEMORY_PORT:$W/kv_memory.pid kv_redis:$REDIS_KV_PORT:$W/kv_redis.pid" \
  bash bench/peers.sh bench | tee "$W/$TAG.summary.md"
after=$(redis_cpu)

echo
echo "## rate limiter on Redis against the embedded store (tag $TAG; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 bench/ratios.py "$RESULTS" "$TAG" kv | tee -a "$W/$TAG.summary.md"
echo "redis-server CPU over the whole run: $(python3 -c "print(round($after - $before, 2))") s; counter now $(redis-cli -p $REDIS_PORT GET 'wasmtp:{ratelimit}:v:ip:127.0.0.1')" \
  | tee -a "$W/$TAG.summary.md"
