#!/usr/bin/env python3
"""Host CPU per message for the attacks of the bounded-work issue, for one or more builds in
the same run (e.g. this build and the previous main), so the figures compare directly.

    python3 bench/attacks.py target/release/wasmtp [/tmp/wasmtp-old ...]

Each attack runs against a fresh proxy (embedded Maildir upstream, the example plugins and the
`hostile` fixture from guest-plugins/target/wasm32-wasip2/release) and prints the proxy's CPU
seconds for the attack message, the reply the client got and the wall time. A build that
takes longer than the bound (120 s) is stopped and reported as such. Build the guests first:
`(cd guest-plugins && cargo build --release)`.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "guest-plugins/target/wasm32-wasip2/release")
BOUND = 120.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            return "(connection closed)"
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return f"{lines[0][:60]}" + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")


def stuff(message):
    out = []
    for line in message.split(b"\r\n"):
        out.append(b"." + line if line.startswith(b".") else line)
    return b"\r\n".join(out) + b".\r\n"


def run(binary, plugins, message, extra=""):
    work = tempfile.mkdtemp(prefix="wasmtp-attack-")
    port = free_port()
    config = os.path.join(work, "wasmtp.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nhostname = "proxy.test"\n'
                f'[upstream]\nurl = "maildir:{work}/mail"\n[sandbox]\ncache_dir = "{work}/cache"\n'
                f'quarantine = "{work}/quarantine"\n[log]\nlevel = "info"\n{extra}{plugins}')
    log = open(os.path.join(work, "log"), "wb")
    proc = subprocess.Popen([binary, "serve", "--config", config], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(BOUND)
        f = s.makefile("r", newline="\r\n")
        read_reply(f)
        for cmd in ["EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA"]:
            s.sendall(cmd.encode() + b"\r\n")
            read_reply(f)
        before = cpu_seconds(proc.pid)
        started = time.monotonic()
        s.sendall(stuff(message))
        try:
            reply = read_reply(f)
        except socket.timeout:
            reply = f"(no reply within {BOUND:.0f} s)"
        wall = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - before
        s.close()
    finally:
        proc.kill()
        proc.wait()
        log.close()
    log_bytes = os.path.getsize(os.path.join(work, "log"))
    shutil.rmtree(work, ignore_errors=True)
    return cpu, wall, reply, log_bytes


def plugin(name, wasm, config=""):
    return f'[[plugins]]\nname = "{name}"\npath = "{GUESTS}/{wasm}"\n{config}'


def attacks():
    fields = b"".join(b"X-Internal: %d\r\n" % i for i in range(80_000))
    forged = b"".join(b"Authentication-Results: proxy.test; spf=pass smtp.mailfrom=x%d\r\n" % i for i in range(20_000))
    body = b"Subject: attack\r\n\r\nbody\r\n"
    stamper = plugin("stamper", "header_stamper.wasm", '[plugins.config]\nremove = ["X-Internal"]\n')
    hostile = lambda behaviour, edits: plugin(  # noqa: E731
        "hostile", "hostile.wasm",
        f'limits = {{ data_time = "30s", memory = "256MiB" }}\n[plugins.config]\nbehaviour = "{behaviour}"\n'
        f'stages = ["data"]\nedits = {edits}\n')
    auth = '[auth]\nenabled = true\nauthserv_id = "proxy.test"\nnameservers = ["127.0.0.1:9"]\ndns_timeout = "100ms"\n'
    return [
        ("80 000 X-Internal fields through header-stamper", stamper, fields + body, ""),
        ("a plugin answering 100 000 insert-header edits", hostile("many-edits", '["insert-header"]'), body, ""),
        ("20 000 forged Authentication-Results, [auth] on", "", forged + body, auth),
        ("a plugin writing 4000 log lines", hostile("log-spam", "[]"), body, ""),
    ]


def main():
    binaries = sys.argv[1:] or [os.path.join(ROOT, "target/release/wasmtp")]
    print("| attack | build | proxy CPU s | wall s | reply | log octets |")
    print("|---|---|---|---|---|---|")
    for name, plugins, message, extra in attacks():
        for binary in binaries:
            cpu, wall, reply, log_bytes = run(binary, plugins, message, extra)
            print(f"| {name} | {binary} | {cpu:.2f} | {wall:.2f} | {reply} | {log_bytes} |", flush=True)


if __name__ == "__main__":
    main()
