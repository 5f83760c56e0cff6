#!/usr/bin/env python3
"""Memory per session: opens N SMTP sessions to a server, takes each past EHLO, keeps them all
idle, and prints the server's resident memory before and with them (a benchmark: it prints,
it never fails).

usage: sessions.py PORT PID [N]   (N defaults to 10000; raises its own file limit)"""
import resource
import socket
import sys

port, pid = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 256
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_reply(s):
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
        lines = buf.split(b"\r\n")
        if len(lines) > 1 and any(len(l) >= 4 and l[3:4] == b" " for l in lines[:-1]):
            return buf


base = rss_kib(pid)
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    read_reply(s)
    s.sendall(b"EHLO bench.example\r\n")
    reply = read_reply(s)
    if not reply.startswith(b"250"):
        raise RuntimeError(f"session {i}: {reply!r}")
    socks.append(s)
with_sessions = rss_kib(pid)
per = (with_sessions - base) / n
print(f"{n} idle sessions past EHLO: server RSS {base / 1024:.1f} MiB before, {with_sessions / 1024:.1f} MiB with them; "
      f"{per:.1f} KiB per session; {with_sessions / 1024 / 1024:.3f} GiB (target <= 1 GiB, ratio {with_sessions / 1024 / 1024:.2f})")
for s in socks:
    s.close()
