#!/usr/bin/env bash
# End-to-end benchmark, all on loopback in one run: direct to Postfix's smtp-sink (the physical
# limit for a proxy), wasmtp without plugins, wasmtp with three example plugins (an RCPT
# rewriter, a DATA header stamper, a content guard), and Haraka as a lockstep proxy to the same
# sink. Driven by Postfix's smtp-source through bench/peers.sh (one TCP connection per message,
# repeated, medians, ratios to direct measured back to back). Prints figures; never fails on them.
#
#   bench/e2e.sh                  # REPS=3, the cases of the benchmark issue
#   REPS=1 CASES="1:5120:500" bench/e2e.sh
#   BASELINE_BIN=/tmp/wasmtp-old WITH_HARAKA=0 bench/e2e.sh
#                                 # also run another build (e.g. the previous main) with the same
#                                 # configurations, measured back to back, and print the ratios
#   THIS_BIN=/tmp/wasmtp-a BASELINE_BIN=/tmp/wasmtp-b XCLIENT=on WITH_HARAKA=0 bench/e2e.sh
#                                 # (THIS_GUESTS / BASELINE_GUESTS: their trees' guest builds)
#                                 # two other builds against each other (XCLIENT=on: the
#                                 # configurations carry no setting an old build lacks)
#   WITH_ADMIN=1 WITH_HARAKA=0 CASES="50:5120:5000" bench/e2e.sh
#                                 # also run the +3 plugins proxy with its admin listener scraped
#                                 # every second, and print its ratio to the one without
#   WITH_EACH=1 WITH_HARAKA=0 CASES="50:5120:5000 10:1048576:300" bench/e2e.sh
#                                 # also run each plugin alone, and print what each adds to the
#                                 # proxy's CPU per message and per MiB (bench/plugin-costs.sh)
#   WITH_TLS=1 WITH_HARAKA=0 CASES="10:5120:2000" bench/e2e.sh
#                                 # also measure STARTTLS against plain on the proxy without
#                                 # plugins (bench/tls.py), and RSS per idle TLS session
#
# Needs postfix (smtp-sink, smtp-source; scripts/setup --test installs it) and node/npm for
# Haraka (peers.sh installs Haraka with npm under $W). Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export W=${W:-/tmp/wasmtp-bench}
export REPS=${REPS:-3}
export CASES=${CASES:-"1:5120:1000 10:5120:3000 50:5120:5000 10:102400:2000 10:1048576:300 50:1048576:300"}
export TAG=${TAG:-wasmtp-$(date +%Y%m%d-%H%M%S)}
export RESULTS=${RESULTS:-$W/results.csv}
export WITH_HARAKA=${WITH_HARAKA:-1}
BASELINE_BIN=${BASELINE_BIN:-}
THIS_BIN=${THIS_BIN:-$ROOT/target/release/wasmtp}
# Guest plugins for an older build (one from before the 0.2 contract loads only 0.1 plugins):
# its own tree's guest-plugins/target/wasm32-wasip2/release.
THIS_GUESTS=${THIS_GUESTS:-}
BASELINE_GUESTS=${BASELINE_GUESTS:-}
WITH_ADMIN=${WITH_ADMIN:-0}
WITH_EACH=${WITH_EACH:-0}
WITH_TLS=${WITH_TLS:-0}
ADMIN_PORT=2544
ADMIN_HTTP=2545
BARE_PORT=2540
PLUGINS_PORT=2541
BASE_BARE_PORT=2542
BASE_PLUGINS_PORT=2543
EACH_PORT=2546 # 2546-2548: one proxy per plugin (WITH_EACH=1)
mkdir -p "$W"

scripts/setup --test
(cd guest-plugins && cargo build --release --locked -q)
cargo build --release --locked -q -p wasmtp
GUESTS=$ROOT/guest-plugins/target/wasm32-wasip2/release

ulimit -n 65536 2>/dev/null || true
cleanup() {
  for f in wasmtp wasmtp3 base base3 admin3 scraper only_rewriter only_stamper only_guard; do
    if [ -f "$W/$f.pid" ]; then kill "$(cat "$W/$f.pid")" 2>/dev/null || true; rm -f "$W/$f.pid"; fi
  done
  bash bench/peers.sh stop || true
}
trap cleanup EXIT

if [ "$WITH_HARAKA" = 1 ]; then bash bench/peers.sh setup; else bash bench/peers.sh sink; fi

# smtp-sink offers XCLIENT to every client, where Postfix offers it only to the hosts in
# smtpd_authorized_xclient_hosts; an XCLIENT-ed connection belongs to its session, so with it
# every message would open an upstream connection of its own. XCLIENT=on measures that.
XCLIENT=${XCLIENT:-off}
XCLIENT_LINE="xclient = false"
[ "$XCLIENT" = on ] && XCLIENT_LINE=""
# plugin_config PORT PLUGIN...: the benchmark proxies' configuration (bench/plugin-config.sh).
# shellcheck source=bench/plugin-config.sh
source bench/plugin-config.sh
plugin_config $BARE_PORT >"$W/wasmtp.toml"
plugin_config $PLUGINS_PORT rewriter stamper guard >"$W/wasmtp3.toml"

start_wasmtp() { # name config port [binary]
  (exec setsid "${4:-$THIS_BIN}" serve --config "$2" --listen "127.0.0.1:$3" </dev/null >"$W/$1.log" 2>&1) &
  echo $! >"$W/$1.pid"
  local i
  for i in $(seq 1 150); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$3") 2>/dev/null; then echo "$1 pid $(cat "$W/$1.pid") on 127.0.0.1:$3" >&2; return 0; fi
    sleep 0.2
  done
  echo "$1 did not start; its log:" >&2
  cat "$W/$1.log" >&2
  return 1
}
if [ -n "$THIS_GUESTS" ]; then sed -i "s#$GUESTS#$THIS_GUESTS#" "$W/wasmtp3.toml"; fi
start_wasmtp wasmtp "$W/wasmtp.toml" $BARE_PORT
start_wasmtp wasmtp3 "$W/wasmtp3.toml" $PLUGINS_PORT

TARGETS="direct:2526"
[ "$WITH_HARAKA" = 1 ] && TARGETS="$TARGETS haraka:2525:$W/haraka.pid"
TARGETS="$TARGETS wasmtp:$BARE_PORT:$W/wasmtp.pid wasmtp3:$PLUGINS_PORT:$W/wasmtp3.pid"
if [ -n "$BASELINE_BIN" ]; then
  # The same configurations without settings an older build may not know.
  for c in wasmtp wasmtp3; do
    grep -v '^xclient = ' "$W/$c.toml" | sed "s#$GUESTS#${BASELINE_GUESTS:-$GUESTS}#" >"$W/base-$c.toml"
  done
  start_wasmtp base "$W/base-wasmtp.toml" $BASE_BARE_PORT "$BASELINE_BIN"
  start_wasmtp base3 "$W/base-wasmtp3.toml" $BASE_PLUGINS_PORT "$BASELINE_BIN"
  TARGETS="$TARGETS base:$BASE_BARE_PORT:$W/base.pid base3:$BASE_PLUGINS_PORT:$W/base3.pid"
fi
if [ "$WITH_ADMIN" = 1 ]; then
  { cat "$W/wasmtp3.toml"; printf '\n[admin]\nlisten = "127.0.0.1:%s"\n' $ADMIN_HTTP; } >"$W/admin3.toml"
  start_wasmtp admin3 "$W/admin3.toml" $ADMIN_PORT
  (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$ADMIN_HTTP/metrics" || true; done) &
  echo $! >"$W/scraper.pid"
  TARGETS="$TARGETS admin3:$ADMIN_PORT:$W/admin3.pid"
fi
if [ "$WITH_EACH" = 1 ]; then
  port=$EACH_PORT
  for p in rewriter stamper guard; do
    plugin_config $port $p | sed "s#$GUESTS#${THIS_GUESTS:-$GUESTS}#" >"$W/only_$p.toml"
    start_wasmtp only_$p "$W/only_$p.toml" $port
    TARGETS="$TARGETS only_$p:$port:$W/only_$p.pid"
    port=$((port + 1))
  done
fi
export TARGETS
bash bench/peers.sh bench | tee "$W/$TAG.summary.md"

echo
echo "## wasmtp against its targets (tag $TAG; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 bench/ratios.py "$RESULTS" "$TAG" | tee -a "$W/$TAG.summary.md"
if [ -n "$BASELINE_BIN" ]; then
  echo
  echo "## this build against $BASELINE_BIN, same run"
  python3 bench/ratios.py "$RESULTS" "$TAG" baseline | tee -a "$W/$TAG.summary.md"
fi

if [ "$WITH_EACH" = 1 ]; then
  echo
  echo "## What each plugin adds, same run"
  python3 bench/ratios.py "$RESULTS" "$TAG" plugins | tee -a "$W/$TAG.summary.md"
fi

if [ "$WITH_ADMIN" = 1 ]; then
  echo
  echo "## +3 plugins with the admin listener scraped every second, against without, same run"
  python3 bench/ratios.py "$RESULTS" "$TAG" admin | tee -a "$W/$TAG.summary.md"
fi

echo
echo "## Memory per session"
python3 bench/sessions.py $BARE_PORT "$(cat "$W/wasmtp.pid")" 10000 | tee -a "$W/$TAG.summary.md"
python3 bench/sessions.py $PLUGINS_PORT "$(cat "$W/wasmtp3.pid")" 10000 | tee -a "$W/$TAG.summary.md"

if [ "$WITH_TLS" = 1 ]; then
  echo
  echo "## STARTTLS against plain, wasmtp without plugins, same run (bench/tls.py)"
  python3 bench/tls.py $BARE_PORT "$(cat "$W/wasmtp.pid")" --conc 10,50 --messages 2000 --idle 10000 \
    | tee -a "$W/$TAG.summary.md"
fi
