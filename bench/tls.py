#!/usr/bin/env python3
"""STARTTLS cost: messages/s and proxy CPU per 1000 messages with and without STARTTLS on the
client side, measured back to back against the same running proxy, and the proxy's resident
memory per idle TLS session. A benchmark: it prints figures, it never fails on them.

    python3 bench/tls.py PORT PID [--conc 10,50] [--messages 2000] [--size 5120] [--idle 10000]

The proxy must listen on PORT as an `smtp` listener (which offers STARTTLS, with the
self-signed certificate it makes when none is configured) and relay somewhere that accepts
everything (bench/tls.sh starts it in front of Postfix's smtp-sink). The clients are Python
processes (smtplib over `ssl`), so at high concurrency the client side takes a share of the
machine; both modes pay that alike, which is why only the ratio is the figure.
"""
import argparse
import multiprocessing
import os
import resource
import smtplib
import socket
import ssl
import time


def cpu_seconds(pid):
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def worker(args):
    port, count, size, tls = args
    body = b"Subject: tls bench\r\n\r\n" + b"x" * (size - 24) + b"\r\n"
    ctx = client_context() if tls else None
    sent = 0
    for _ in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo("bench.example")
            if tls:
                s.starttls(context=ctx)
                s.ehlo("bench.example")
            s.sendmail("bench@example.org", ["sink@example.net"], body)
            sent += 1
    return sent


def run(port, pid, conc, messages, size, tls):
    per = max(1, messages // conc)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    with multiprocessing.Pool(conc) as pool:
        sent = sum(pool.map(worker, [(port, per, size, tls)] * conc))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    return sent / elapsed, cpu / sent * 1000


def idle_sessions(port, pid, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, max(hard, n + 256)))
    ctx = client_context()
    base = rss_kib(pid)
    conns = []
    for i in range(n):
        s = smtplib.SMTP("127.0.0.1", port, timeout=30)
        s.ehlo("bench.example")
        s.starttls(context=ctx)
        s.ehlo("bench.example")
        conns.append(s)
    with_sessions = rss_kib(pid)
    for s in conns:
        s.sock.close()
    per = (with_sessions - base) / n
    print(f"{n} idle sessions past STARTTLS and EHLO: proxy RSS {base / 1024:.1f} MiB before, "
          f"{with_sessions / 1024:.1f} MiB with them: {per:.1f} KiB per TLS session")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("pid", type=int)
    p.add_argument("--conc", default="10,50")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--idle", type=int, default=10000, help="idle TLS sessions to hold (0: skip)")
    a = p.parse_args()
    print(f"| c | size | plain msg/s | STARTTLS msg/s (÷ plain) | plain CPU s/1000 | STARTTLS CPU s/1000 (÷ plain) |")
    print("|---|---|---|---|---|---|")
    for conc in [int(c) for c in a.conc.split(",")]:
        # Alternate the modes so a drift of the machine hits both; medians of the repetitions.
        plain, tls = [], []
        for _ in range(a.reps):
            plain.append(run(a.port, a.pid, conc, a.messages, a.size, False))
            tls.append(run(a.port, a.pid, conc, a.messages, a.size, True))
        med = lambda xs, i: sorted(x[i] for x in xs)[len(xs) // 2]
        pr, tr, pc, tc = med(plain, 0), med(tls, 0), med(plain, 1), med(tls, 1)
        print(f"| {conc} | {a.size} | {pr:.0f} | {tr:.0f} ({tr / pr:.2f}) | {pc:.2f} | {tc:.2f} ({tc / pc:.2f}) |",
              flush=True)
    if a.idle:
        idle_sessions(a.port, a.pid, a.idle)


if __name__ == "__main__":
    main()
