#!/usr/bin/env python3
"""Prints wasmtp's figures against direct delivery and Haraka from peers.sh's results.csv:
messages/s ratios (paired per repetition, medians), proxy CPU per 1000 messages and per
1000 MiB, and peak RSS, next to the targets of the benchmark issue.

With `baseline`, compares this build (targets wasmtp, wasmtp3) with another build measured in
the same run (targets base, base3): messages/s ratios and CPU per message of both.

With `kv`, compares the rate limiter on Redis (target kv_redis) with the same proxy on the
embedded store (kv_memory), from bench/kv-e2e.sh.

With `plugins`, what each benchmark plugin alone (targets only_rewriter, only_stamper,
only_guard) and the three together (wasmtp3) add to the proxy's CPU over no plugins (wasmtp),
per message and per MiB, from `WITH_EACH=1 bench/e2e.sh`.

With `admin`, compares the +3 plugins proxy scraped through its admin listener (target admin3)
with the same configuration without one (wasmtp3).

usage: ratios.py RESULTS.csv TAG [baseline|admin|kv|plugins]"""
import csv
import statistics as st
import sys
from collections import defaultdict

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["tag"] == sys.argv[2] and r["status"] == "ok"]
by = {(r["rep"], r["conc"], r["size"], r["target"]): r for r in rows}
cases = sorted({(int(r["conc"]), int(r["size"])) for r in rows}, key=lambda c: (c[1], c[0]))


def ratio(target, base, conc, size):
    v = []
    for (rep, c, s, t), r in by.items():
        if t == target and int(c) == conc and int(s) == size:
            b = by.get((rep, c, s, base))
            if b:
                v.append(float(r["e2e_mps"]) / float(b["e2e_mps"]))
    return st.median(v) if v else float("nan")


def med(target, conc, size, key):
    v = [float(r[key]) for r in rows if r["target"] == target and int(r["conc"]) == conc and int(r["size"]) == size]
    return st.median(v) if v else float("nan")


def target_ratio(conc, size):
    if size >= 100 * 1024:
        return 0.6
    return 0.5 if conc == 1 else 0.4


def cpu_per_msg(target, conc, size):
    n = med(target, conc, size, "count")
    return med(target, conc, size, "server_cpu") * 1000 / n if n == n and n else float("nan")


if len(sys.argv) > 3 and sys.argv[3] == "baseline":
    print("| case | msg/s bare: this / baseline | msg/s +3 plugins: this / baseline "
          "| proxy CPU ms/msg bare: this, baseline | proxy CPU ms/msg +3 plugins: this, baseline |")
    print("|---|---|---|---|---|")
    for conc, size in cases:
        print(f"| c={conc}, {size // 1024} KiB | {ratio('wasmtp', 'base', conc, size):.3f} | "
              f"{ratio('wasmtp3', 'base3', conc, size):.3f} | "
              f"{cpu_per_msg('wasmtp', conc, size):.3f}, {cpu_per_msg('base', conc, size):.3f} | "
              f"{cpu_per_msg('wasmtp3', conc, size):.3f}, {cpu_per_msg('base3', conc, size):.3f} |")
    sys.exit(0)

if len(sys.argv) > 3 and sys.argv[3] == "kv":
    print("| case | msg/s redis / embedded | msg/s embedded, redis | proxy CPU ms/msg: embedded, redis |")
    print("|---|---|---|---|")
    for conc, size in cases:
        print(f"| c={conc}, {size // 1024} KiB | {ratio('kv_redis', 'kv_memory', conc, size):.3f} | "
              f"{med('kv_memory', conc, size, 'e2e_mps'):.0f}, {med('kv_redis', conc, size, 'e2e_mps'):.0f} | "
              f"{cpu_per_msg('kv_memory', conc, size):.3f}, {cpu_per_msg('kv_redis', conc, size):.3f} |")
    sys.exit(0)

if len(sys.argv) > 3 and sys.argv[3] == "plugins":
    # CPU added over the proxy without plugins; per MiB for the large cases (the per-message
    # part is small next to the body's), per message for the small ones.
    print("| plugin | " + " | ".join(f"c={c}, {s // 1024} KiB: ms/msg added" + (", ms/MiB" if s >= 2**20 else "")
                                   for c, s in cases) + " |")
    print("|---|" + "---|" * len(cases))
    for name, target in [("address-rewriter", "only_rewriter"), ("header-stamper", "only_stamper"),
                         ("content-guard", "only_guard"), ("all three", "wasmtp3")]:
        cells = []
        for conc, size in cases:
            added = cpu_per_msg(target, conc, size) - cpu_per_msg("wasmtp", conc, size)
            cell = f"{added:.3f}"
            if size >= 2**20:
                cell += f", {added / (size / 2**20):.2f}"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("| case | msg/s +3 plugins / no plugins (target ≥ 0.8) |")
    print("|---|---|")
    for conc, size in cases:
        print(f"| c={conc}, {size // 1024} KiB | {ratio('wasmtp3', 'wasmtp', conc, size):.3f} |")
    sys.exit(0)

if len(sys.argv) > 3 and sys.argv[3] == "admin":
    print("| case | msg/s with admin + scraping / without | proxy CPU ms/msg: with, without |")
    print("|---|---|---|")
    for conc, size in cases:
        print(f"| c={conc}, {size // 1024} KiB | {ratio('admin3', 'wasmtp3', conc, size):.3f} | "
              f"{cpu_per_msg('admin3', conc, size):.3f}, {cpu_per_msg('wasmtp3', conc, size):.3f} |")
    sys.exit(0)

print("| case | direct msg/s | wasmtp msg/s | wasmtp+3 plugins msg/s | Haraka msg/s | +3 plugins / direct (target) "
      "| +3 plugins / Haraka (target 5) | no plugins / direct | proxy CPU s per 1000 msgs (+3 plugins) "
      "| CPU s per 1000 MiB | peak RSS MiB (+3 plugins) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for conc, size in cases:
    n = med("wasmtp3", conc, size, "count")
    cpu = med("wasmtp3", conc, size, "server_cpu")
    per_msg = cpu * 1000 / n if n == n and n else float("nan")
    per_mib = cpu * 1000 / (n * size / 2**20) if n == n and n else float("nan")
    rss = max([float(r["server_rss_kb"]) for r in rows if r["target"] == "wasmtp3" and int(r["conc"]) == conc
               and int(r["size"]) == size] or [float("nan")]) / 1024
    print(f"| c={conc}, {size // 1024} KiB | {med('direct', conc, size, 'e2e_mps'):.0f} | "
          f"{med('wasmtp', conc, size, 'e2e_mps'):.0f} | {med('wasmtp3', conc, size, 'e2e_mps'):.0f} | "
          f"{med('haraka', conc, size, 'e2e_mps'):.0f} | "
          f"{ratio('wasmtp3', 'direct', conc, size):.2f} (≥ {target_ratio(conc, size)}) | "
          f"{ratio('wasmtp3', 'haraka', conc, size):.1f} | {ratio('wasmtp', 'direct', conc, size):.2f} | "
          f"{per_msg:.2f} | {per_mib:.1f} | {rss:.0f} |")
