#!/usr/bin/env bash
# peers.sh: set up and measure SMTP relay throughput anchors on 127.0.0.1 (used by bench/e2e.sh).
# The peers' first measurement is summarised in bench/README.md.
#
#   upstream sink : Postfix smtp-sink 127.0.0.1:2526 (throws mail away, counts it with -c)
#   direct        : smtp-source -> sink                                  (the physical limit for a proxy)
#   haraka        : smtp-source -> Haraka :2525 (queue/smtp_proxy, lockstep) -> sink       (stock)
#   haraka_nd     : same Haraka config on :2528, plus a TCP_NODELAY preload ($W/nodelay.js)
#   haraka_fwd    : same Haraka config on :2530 but queue/smtp_forward     (WITH_HARAKA_FWD=1)
#   postfix       : private Postfix relay :2527 -> sink, store-and-forward (WITH_POSTFIX=1)
#   proxsmtp      : Debian proxsmtp 1.10 before-queue proxy :2529 -> sink  (WITH_PROXSMTP=1, apt-get install proxsmtp)
#   anything else : TARGETS="name:port[:pidfile]" (e.g. our proxy) is measured the same way;
#                   the pidfile names the server's root process (CPU/RSS are summed over its process tree)
#
# Usage:
#   peers.sh setup      # start sink + both Haraka instances (+ optional peers)
#   peers.sh sink       # start only the sink
#   peers.sh bench      # run the matrix, append rows to $RESULTS, print summary tables
#   peers.sh summary [TAG]  # print the summary tables again from $RESULTS
#   peers.sh stop       # stop every server this script started (by pid / postfix -c ... stop)
#   peers.sh all        # setup + bench + stop
# Example, our proxy on :2540 relaying to the sink, compared back to back with direct and Haraka:
#   peers.sh setup && TARGETS="direct:2526 haraka:2525:/tmp/anchors/haraka.pid ours:2540:/tmp/ours.pid" \
#     TAG=ours peers.sh bench; peers.sh stop
#
# Environment (defaults in brackets):
#   W        work dir [/tmp/anchors]     REPS  repetitions [3]     TAG  label for this bench run [timestamp]
#   RESULTS  CSV file [$W/results.csv] (one row per measurement; summary filters by TAG)
#   TARGETS  space-separated name:port[:pidfile]
#            [direct:2526 haraka:2525:$W/haraka.pid haraka_nd:2528:$W/haraka_nd.pid] + optional peers below
#   CASES    space-separated conc:size_bytes:count  [1:5120:1000 10:5120:3000 50:5120:5000 10:102400:2000 10:1048576:300]
#   WITH_POSTFIX=1 / WITH_PROXSMTP=1 / WITH_HARAKA_FWD=1   also set up and measure that peer
#   HARAKA_NODES [0]  0 = single process (no cluster); N = cluster with N workers
#   HARAKA_VERSION [3.3.4]
#
# Every server listens on 127.0.0.1 only (ports 2525-2530). Loops are bounded. Nothing is
# killed by name: only the pids recorded in $W/*.pid (and `postfix -c $W/pfx/etc stop`).
# Needs: postfix (smtp-sink, smtp-source), node+npm, python3, /usr/bin/time; optional proxsmtp.
set -euo pipefail

W=${W:-/tmp/anchors}
REPS=${REPS:-3}
WITH_POSTFIX=${WITH_POSTFIX:-0}
HARAKA_NODES=${HARAKA_NODES:-0}
WITH_HARAKA_FWD=${WITH_HARAKA_FWD:-0}
HARAKA_VERSION=${HARAKA_VERSION:-3.3.4}
SINK_PORT=2526
HARAKA_PORT=2525
HARAKA_ND_PORT=2528
PROXSMTP_PORT=2529
HARAKA_FWD_PORT=2530
WITH_PROXSMTP=${WITH_PROXSMTP:-0}
PFX_PORT=2527
CASES=${CASES:-"1:5120:1000 10:5120:3000 50:5120:5000 10:102400:2000 10:1048576:300"}
DEFAULT_TARGETS="direct:$SINK_PORT haraka:$HARAKA_PORT:$W/haraka.pid haraka_nd:$HARAKA_ND_PORT:$W/haraka_nd.pid"
[ "$WITH_POSTFIX" = 1 ] && DEFAULT_TARGETS="$DEFAULT_TARGETS postfix:$PFX_PORT:$W/pfx/spool/pid/master.pid"
[ "$WITH_PROXSMTP" = 1 ] && DEFAULT_TARGETS="$DEFAULT_TARGETS proxsmtp:$PROXSMTP_PORT:$W/proxsmtp.pid"
[ "$WITH_HARAKA_FWD" = 1 ] && DEFAULT_TARGETS="$DEFAULT_TARGETS haraka_fwd:$HARAKA_FWD_PORT:$W/haraka_fwd.pid"
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
RESULTS=${RESULTS:-$W/results.csv}
mkdir -p "$W"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

wait_port() { # port, max tries of 0.2 s
  local i
  for i in $(seq 1 "${2:-100}"); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  log "port $1 did not open"; return 1
}

# ---------------------------------------------------------------------------- helpers (python)
write_helpers() {
cat > "$W/procstat.py" <<'PY'
#!/usr/bin/env python3
"""procstat.py cpu ROOTPID        -> total CPU seconds of the live process tree + reaped children
   procstat.py rss ROOTPID        -> "sum_rss_kb nprocs root_vmhwm_kb sum_pss_kb"
   procstat.py sample ROOTPID OUT -> poll tree RSS every 0.2 s until OUT.stop exists (max 3000 polls),
                                     write max summed RSS (kB), max nprocs, max summed PSS (kB) to OUT"""
import os, sys, time
TCK = os.sysconf('SC_CLK_TCK')

def table():
    t = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(')') + 2:].split()
        # rest[0]=state rest[1]=ppid ... utime=rest[11] stime=rest[12] cutime=rest[13] cstime=rest[14]
        t[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]))
    return t

def tree(root, t):
    kids = {}
    for pid, (ppid, _, _) in t.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in t:
            out.append(p)
            todo.extend(kids.get(p, []))
    return out

def status_kb(pid, key):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

def cpu(root):
    t = table()
    pids = tree(root, t)
    ticks = sum(t[p][1] for p in pids) + (t[root][2] if root in t else 0)
    return ticks / TCK

def pss_kb(pid):
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

def rss(root, with_pss=True):
    t = table()
    pids = tree(root, t)
    return (sum(status_kb(p, 'VmRSS') for p in pids), len(pids), status_kb(root, 'VmHWM'),
            sum(pss_kb(p) for p in pids) if with_pss else 0)

cmd, root = sys.argv[1], int(sys.argv[2])
if cmd == 'cpu':
    print(f'{cpu(root):.2f}')
elif cmd == 'rss':
    print(*rss(root))
elif cmd == 'sample':
    out = sys.argv[3]
    mx, mn, mp = 0, 0, 0
    for _ in range(3000):
        r, n, _h, p = rss(root)
        mx, mn, mp = max(mx, r), max(mn, n), max(mp, p)
        if os.path.exists(out + '.stop'):
            break
        time.sleep(0.2)
    with open(out, 'w') as f:
        f.write(f'{mx} {mn} {mp}\n')
PY

cat > "$W/summary.py" <<'PY'
#!/usr/bin/env python3
"""Summarise results.csv: medians over repetitions, spread (min-max), and per-repetition
ratios target/direct measured back to back (same rep, same case)."""
import csv, sys, statistics as st
from collections import defaultdict
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r['status'] == 'ok']
if len(sys.argv) > 2:  # optional run tag filter
    rows = [r for r in rows if r['tag'] == sys.argv[2]]
g = defaultdict(list)
for r in rows:
    g[(r['target'], r['conc'], r['size'])].append(r)
def f(x): return float(x) if x not in ('', None) else float('nan')
def med(v): return st.median(v) if v else float('nan')
def spread(v): return f'{min(v):.0f}-{max(v):.0f}' if v else ''
order = {'direct': 0, 'haraka': 1, 'haraka_nd': 2, 'haraka_fwd': 3, 'postfix': 4, 'proxsmtp': 5}
keys = sorted(g, key=lambda k: (int(k[2]), int(k[1]), order.get(k[0], 9), k[0]))
print('| target | conc | msg size | n (reps) | msgs/s e2e median (min-max) | client accept msgs/s | wall s | server CPU s /1000 msgs | sink CPU s /1000 | client CPU s /1000 | other CPU s during run (median) | server peak RSS MiB (sum over procs) | server peak PSS MiB | server procs | client max RSS MiB | load1 at start |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for k in keys:
    rs = g[k]
    n = int(rs[0]['count'])
    e2e = [f(r['e2e_mps']) for r in rs]
    acc = [f(r['accept_mps']) for r in rs]
    print(f"| {k[0]} | {k[1]} | {int(k[2])//1024} KiB | {n} ({len(rs)}) | {med(e2e):.0f} ({spread(e2e)}) | {med(acc):.0f} | "
          f"{med([f(r['e2e_wall']) for r in rs]):.2f} | "
          f"{med([f(r['server_cpu'])*1000/n for r in rs]):.2f} | "
          f"{med([f(r['sink_cpu'])*1000/n for r in rs]):.2f} | "
          f"{med([f(r['client_cpu'])*1000/n for r in rs]):.2f} | "
          f"{med([f(r.get('other_cpu') or 'nan') for r in rs]):.2f} | "
          f"{max([f(r['server_rss_kb']) for r in rs])/1024:.0f} | {max([f(r.get('server_pss_kb') or 0) for r in rs])/1024:.0f} | {max([int(r['server_procs'] or 0) for r in rs])} | "
          f"{max([f(r['client_rss_kb']) for r in rs])/1024:.1f} | "
          f"{min([f(r['load1']) for r in rs]):.2f}-{max([f(r['load1']) for r in rs]):.2f} |")
# ratios vs direct, paired by (tag, rep, case)
by = {(r['tag'], r['rep'], r['conc'], r['size'], r['target']): r for r in rows}
rat = defaultdict(list)
for (tag, rep, c, s, t), r in by.items():
    d = by.get((tag, rep, c, s, 'direct'))
    if t != 'direct' and d:
        rat[(t, c, s)].append(f(r['e2e_mps']) / f(d['e2e_mps']))
if rat:
    print()
    print('| target / direct (same rep, back to back) | conc | msg size | ratio median | min-max |')
    print('|---|---|---|---|---|')
    for k in sorted(rat, key=lambda k: (int(k[2]), int(k[1]), order.get(k[0], 9))):
        v = rat[k]
        print(f'| {k[0]} | {k[1]} | {int(k[2])//1024} KiB | {med(v):.3f} | {min(v):.3f}-{max(v):.3f} |')
PY
}

# ---------------------------------------------------------------------------- sink
start_sink() {
  if [ -f "$W/sink.pid" ] && kill -0 "$(cat "$W/sink.pid")" 2>/dev/null; then log "sink already running"; return; fi
  # -c: running counters (used to verify delivery); no -d/-D: nothing written per message
  setsid smtp-sink -c -u nobody 127.0.0.1:$SINK_PORT 1000 </dev/null >"$W/sink.log" 2>&1 &
  echo $! >"$W/sink.pid"
  wait_port $SINK_PORT
  log "smtp-sink pid $(cat "$W/sink.pid") on 127.0.0.1:$SINK_PORT"
}
sink_count() { # last "mesg=N" written by smtp-sink -c
  local c
  c=$(tail -c 400 "$W/sink.log" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
  echo "${c:-0}"
}

# ---------------------------------------------------------------------------- Haraka
setup_haraka() {
  local H=$W/haraka
  mkdir -p "$H"
  if [ ! -x "$H/node_modules/.bin/haraka" ]; then
    (cd "$H" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --no-audit --no-fund "Haraka@$HARAKA_VERSION" >/dev/null 2>&1)
  fi
  local P=$H/proxy
  [ -d "$P" ] || "$H/node_modules/.bin/haraka" -i "$P" >/dev/null
  rm -f "$P/plugins/mail_from.is_resolvable" "$P/plugins/rcpt_to.in_host_list"
  rm -rf "$P/plugins/queue"
  echo anchor.localhost >"$P/config/me"
  cat >"$P/config/smtp.ini" <<EOF
[main]
listen=127.0.0.1:$HARAKA_PORT
; 0 = no cluster: a single Node.js process handles SMTP itself
nodes=$HARAKA_NODES
inactivity_timeout=60
EOF
  cat >"$P/config/log.ini" <<'EOF'
[main]
level=warn
timestamps=false
format=default
EOF
  cat >"$P/config/plugins" <<EOF
# CONNECT: relay ACL (127.0.0.1 may relay); anchor_filter also answers lookup_rdns (no DNS)
relay
# EHLO / MAIL / DATA (data_post adds a header): one cheap check per stage
anchor_filter
# RCPT: recipient domain must be in config/host_list (relaying + local sender may send anywhere)
rcpt_to.in_host_list
# relay to the upstream: smtp_proxy = MAIL/RCPT/DATA relayed live (lockstep)
queue/smtp_proxy
EOF
  cat >"$P/config/relay.ini" <<'EOF'
[relay]
acl=true
force_routing=false
EOF
  echo "127.0.0.1/32" >"$P/config/relay_acl_allow"
  printf 'example.org\nexample.com\n' >"$P/config/host_list"
  local q
  for q in smtp_proxy smtp_forward; do
    cat >"$P/config/$q.ini" <<EOF
[main]
host=127.0.0.1
port=$SINK_PORT
enable_tls=false
enable_outbound=true
EOF
  done
  cat >"$P/plugins/anchor_filter.js" <<'EOF'
'use strict'
// One cheap filter per SMTP stage, for performance anchoring only.
const blocked = new Set(['blocked.example', 'spam.example'])

// Skip the core per-connection reverse-DNS lookup (no DNS anywhere).
exports.hook_lookup_rdns = (next) => next(OK, 'localhost')

function check_helo (next, connection, helo) {
    if (!helo || helo.length > 255 || /[\s<>]/.test(helo)) return next(DENY, 'bad HELO/EHLO name')
    next()
}
exports.hook_helo = check_helo
exports.hook_ehlo = check_helo

exports.hook_mail = (next, connection, params) => {
    const from = params[0]
    if (from.host && blocked.has(from.host.toLowerCase())) return next(DENY, 'sender domain blocked')
    next()
}

exports.hook_data_post = (next, connection) => {
    connection.transaction.add_header('X-Anchor-Filter', 'pass')
    next()
}
EOF
}
write_nodelay() {
  cat >"$W/nodelay.js" <<'JS'
'use strict'
// Measurement-only preload: TCP_NODELAY on every TCP socket Node creates (client and server side).
// Haraka 3.3.4 never calls setNoDelay; its smtp_client writes the final ".\r\n" as a separate
// small write after the body, so Nagle holds it until the upstream's delayed ACK (~40 ms/message).
const net = require('node:net')
const origConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
    this.setNoDelay(true)
    return origConnect.apply(this, args)
}
const origCreateServer = net.createServer
net.createServer = function (...args) {
    const srv = origCreateServer.apply(this, args)
    srv.on('connection', (s) => s.setNoDelay(true))
    return srv
}
JS
}
start_haraka() { # name port nodelay(0|1) [queue plugin: smtp_proxy|smtp_forward]
  local name=$1 port=$2 nd=$3 queue=${4:-smtp_proxy}
  [ -n "$name" ] && [ -n "$W" ] || return 1
  if [ -f "$W/$name.pid" ] && kill -0 "$(cat "$W/$name.pid")" 2>/dev/null; then log "$name already running"; return; fi
  setup_haraka
  local P=$W/haraka/proxy
  if [ "$name" != haraka ]; then   # a second config dir, identical except the listen port
    rm -rf "$W/haraka/proxy-$name"; cp -a "$P" "$W/haraka/proxy-$name"; P=$W/haraka/proxy-$name
    sed -i "s/^listen=.*/listen=127.0.0.1:$port/" "$P/config/smtp.ini"
    sed -i "s|^queue/.*|queue/$queue|" "$P/config/plugins"
  fi
  write_nodelay
  local nodeopts=""
  [ "$nd" = 1 ] && nodeopts="--require $W/nodelay.js"
  # exec: the recorded pid is the node process itself; all fds redirected so nothing holds our stdout
  (cd "$W/haraka" && exec env NODE_OPTIONS="$nodeopts" setsid ./node_modules/.bin/haraka -c "$P" </dev/null >"$W/$name.log" 2>&1) &
  echo $! >"$W/$name.pid"
  wait_port "$port" 150
  log "$name pid $(cat "$W/$name.pid") on 127.0.0.1:$port (nodes=$HARAKA_NODES, $(grep '^queue/' "$P/config/plugins"), TCP_NODELAY preload=$nd)"
}

# ---------------------------------------------------------------------------- Postfix (private instance)
setup_postfix() {
  local P=$W/pfx
  mkdir -p "$P/etc" "$P/spool" "$P/data"
  chown postfix:postfix "$P/data"
  cp /etc/postfix/master.cf "$P/etc/master.cf"
  cat >"$P/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $P/spool
data_directory = $P/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.localhost
mydomain = localhost
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
local_recipient_maps =
alias_maps =
alias_database =
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_address_preference = ipv4
maillog_file = $P/maillog
maillog_file_prefixes = /var, /dev/stdout, $P
biff = no
EOF
  # replace the port-25 smtpd with 127.0.0.1:$PFX_PORT; no chroot anywhere
  sed -i "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$PFX_PORT inet n  -       n       -       -       smtpd/" "$P/etc/master.cf"
  postconf -c "$P/etc" -F '*/*/chroot = n'
  grep -q "^127.0.0.1:$PFX_PORT " "$P/etc/master.cf" || { log "master.cf edit failed"; return 1; }
}
start_postfix() {
  local P=$W/pfx
  if [ -f "$P/spool/pid/master.pid" ] && kill -0 "$(cat "$P/spool/pid/master.pid" | tr -d ' ')" 2>/dev/null; then log "postfix already running"; return; fi
  setup_postfix
  postfix -c "$P/etc" check </dev/null >/dev/null 2>&1 || true
  postfix -c "$P/etc" start </dev/null >/dev/null 2>&1
  wait_port $PFX_PORT
  log "Postfix master pid $(tr -d ' ' <"$P/spool/pid/master.pid") on 127.0.0.1:$PFX_PORT"
}

# ---------------------------------------------------------------------------- proxsmtp (Debian package, optional)
start_proxsmtp() {
  if [ -f "$W/proxsmtp.pid" ] && kill -0 "$(cat "$W/proxsmtp.pid")" 2>/dev/null; then log "proxsmtp already running"; return; fi
  command -v proxsmtpd >/dev/null || { log "proxsmtpd not installed (apt-get install proxsmtp)"; return 1; }
  mkdir -p "$W/proxsmtp/tmp"
  cat >"$W/proxsmtp/proxsmtpd.conf" <<EOF
# before-queue SMTP proxy (C, one thread per connection); no FilterCommand = pass-through
Listen: 127.0.0.1:$PROXSMTP_PORT
OutAddress: 127.0.0.1:$SINK_PORT
MaxConnections: 128
Header: X-Anchor-Filter: pass
TempDirectory: $W/proxsmtp/tmp
TimeOut: 60
EOF
  (exec setsid proxsmtpd -d 1 -f "$W/proxsmtp/proxsmtpd.conf" -p "$W/proxsmtp/pid" </dev/null >"$W/proxsmtp.log" 2>&1) &
  echo $! >"$W/proxsmtp.pid"
  wait_port $PROXSMTP_PORT
  log "proxsmtpd pid $(cat "$W/proxsmtp.pid") on 127.0.0.1:$PROXSMTP_PORT"
}

# ---------------------------------------------------------------------------- measurement
busy_cpu() { # machine-wide busy CPU seconds so far (all cpus), from /proc/stat
  awk -v tck="$(getconf CLK_TCK)" '/^cpu /{print ($2+$3+$4+$7+$8+$9)/tck; exit}' /proc/stat
}
measure() { # tag rep name port pidfile conc size count
  local tag=$1 rep=$2 name=$3 port=$4 pidfile=$5 conc=$6 size=$7 count=$8
  local spid; spid=$(cat "$W/sink.pid")
  local pid=""; [ -n "$pidfile" ] && pid=$(tr -d ' \n' <"$pidfile")
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  local s0; s0=$(sink_count)
  local sinkc0; sinkc0=$(python3 "$W/procstat.py" cpu "$spid")
  local c0=0
  local samp=$W/rss.sample sampler=""
  rm -f "$samp" "$samp.stop"
  if [ -n "$pid" ]; then
    c0=$(python3 "$W/procstat.py" cpu "$pid")
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true   # reset VmHWM of the root process
    python3 "$W/procstat.py" sample "$pid" "$samp" &
    sampler=$!
  fi
  local b0; b0=$(busy_cpu)
  local t0; t0=$(date +%s.%N)
  local st=ok
  /usr/bin/time -f '%e %U %S %M' -o "$W/time.out" \
    smtp-source -s "$conc" -m "$count" -l "$size" -f a@example.org -t b@example.org 127.0.0.1:"$port" \
    >"$W/client.log" 2>&1 || st=client_error
  local t1; t1=$(date +%s.%N)
  # wait until the sink has seen all messages (store-and-forward peers deliver later); max 300 s
  local i target=$((s0 + count)) s1
  for i in $(seq 1 6000); do
    s1=$(sink_count); [ "$s1" -ge "$target" ] && break; sleep 0.05
  done
  local t2; t2=$(date +%s.%N)
  [ "$s1" -ge "$target" ] || st="${st}+missing_$((target - s1))"
  local c1=0 rsskb=0 nprocs=0 hwm=0 psskb=0
  if [ -n "$pid" ]; then
    c1=$(python3 "$W/procstat.py" cpu "$pid")
    touch "$samp.stop"; wait "$sampler" || true
    read -r rsskb nprocs psskb <"$samp"
    hwm=$(python3 "$W/procstat.py" rss "$pid" | cut -d' ' -f3)
  fi
  local b1; b1=$(busy_cpu)
  local sinkc1; sinkc1=$(python3 "$W/procstat.py" cpu "$spid")
  local cwall cuser csys crss
  read -r cwall cuser csys crss < <(tail -1 "$W/time.out") || true
  python3 - "$RESULTS" <<PY
import sys, os
n=$count; t0=$t0; t1=$t1; t2=$t2
row=dict(tag='$tag', rep=$rep, target='$name', conc=$conc, size=$size, count=n, status='$st', load1=$load1,
 client_wall=f'{t1-t0:.3f}', e2e_wall=f'{t2-t0:.3f}', accept_mps=f'{n/(t1-t0):.1f}', e2e_mps=f'{n/(t2-t0):.1f}',
 client_cpu=f'{float("${cuser:-0}")+float("${csys:-0}"):.2f}', client_rss_kb='${crss:-0}',
 server_cpu=f'{$c1-$c0:.2f}', server_rss_kb='$rsskb', server_pss_kb='$psskb', server_procs='$nprocs', server_vmhwm_kb='$hwm',
 sink_cpu=f'{$sinkc1-$sinkc0:.2f}', busy_cpu=f'{$b1-$b0:.2f}')
# CPU used by everything else on the machine during the run (other sessions, samplers, kernel threads)
row['other_cpu'] = f"{float(row['busy_cpu'])-float(row['server_cpu'])-float(row['sink_cpu'])-float(row['client_cpu']):.2f}"
new = not os.path.exists(sys.argv[1])
with open(sys.argv[1],'a') as f:
    if new: f.write(','.join(row)+'\n')
    f.write(','.join(str(v) for v in row.values())+'\n')
print(f"{row['target']:8} c={row['conc']:<3} size={row['size']:<8} n={n:<5} {row['status']:10} load1={row['load1']:<5} "
      f"e2e={row['e2e_mps']:>8}/s accept={row['accept_mps']:>8}/s wall={row['e2e_wall']}s "
      f"srvCPU={row['server_cpu']}s sinkCPU={row['sink_cpu']}s cliCPU={row['client_cpu']}s srvRSS={int(row['server_rss_kb'])//1024}MiB srvPSS={int(row['server_pss_kb'])//1024}MiB otherCPU={row['other_cpu']}s", file=sys.stderr)
PY
}

bench() {
  write_helpers
  local tag=${TAG:-$(date +%Y%m%d-%H%M%S)}
  log "bench tag=$tag reps=$REPS targets='$TARGETS' cases='$CASES'"
  log "uptime: $(uptime)"
  local t name port pidfile c conc size count rep
  # warm-up: 200 small messages per target (JIT, process pools), not recorded
  for t in $TARGETS; do
    IFS=: read -r name port pidfile <<<"$t"
    smtp-source -s 10 -m 200 -l 5120 -f a@example.org -t b@example.org 127.0.0.1:"$port" >/dev/null 2>&1 || log "warm-up $name failed"
  done
  sleep 2
  for rep in $(seq 1 "$REPS"); do
    for c in $CASES; do
      IFS=: read -r conc size count <<<"$c"
      for t in $TARGETS; do   # targets back to back for each case -> stable ratios
        IFS=: read -r name port pidfile <<<"$t"
        if [ "$name" = proxsmtp ] && [ "$conc" -gt 10 ]; then
          log "skip proxsmtp at c=$conc: listen(2) backlog 5 -> SYN drops, 1 s+ retransmit stalls"; continue
        fi
        measure "$tag" "$rep" "$name" "$port" "$pidfile" "$conc" "$size" "$count"
        sleep 1
      done
    done
  done
  python3 "$W/summary.py" "$RESULTS" "$tag"
}

stop_all() {
  local f p
  for f in haraka haraka_nd haraka_fwd proxsmtp sink; do
    if [ -f "$W/$f.pid" ]; then
      p=$(cat "$W/$f.pid")
      if kill -0 "$p" 2>/dev/null; then kill "$p"; log "stopped $f pid $p"; fi
      rm -f "$W/$f.pid"
    fi
  done
  if [ -f "$W/pfx/spool/pid/master.pid" ] && kill -0 "$(tr -d ' ' <"$W/pfx/spool/pid/master.pid")" 2>/dev/null; then
    postfix -c "$W/pfx/etc" stop && log "stopped private postfix"
  fi
}

case "${1:-all}" in
  sink)    write_helpers; start_sink ;;
  setup)   write_helpers; start_sink; start_haraka haraka $HARAKA_PORT 0; start_haraka haraka_nd $HARAKA_ND_PORT 1
           [ "$WITH_POSTFIX" = 1 ] && start_postfix; [ "$WITH_PROXSMTP" = 1 ] && start_proxsmtp
           [ "$WITH_HARAKA_FWD" = 1 ] && start_haraka haraka_fwd $HARAKA_FWD_PORT 0 smtp_forward; true ;;
  bench)   bench ;;
  summary) write_helpers; python3 "$W/summary.py" "$RESULTS" ${2:-} ;;
  stop)    stop_all ;;
  all)     write_helpers; start_sink; start_haraka haraka $HARAKA_PORT 0; start_haraka haraka_nd $HARAKA_ND_PORT 1
           if [ "$WITH_POSTFIX" = 1 ]; then start_postfix; fi
           if [ "$WITH_PROXSMTP" = 1 ]; then start_proxsmtp; fi
           if [ "$WITH_HARAKA_FWD" = 1 ]; then start_haraka haraka_fwd $HARAKA_FWD_PORT 0 smtp_forward; fi
           bench; stop_all ;;
  *) echo "usage: $0 setup|sink|bench|summary|stop|all" >&2; exit 2 ;;
esac
