#!/usr/bin/env python3
"""Groups `perf report --no-children --sort dso,sym -g none -t '|'` lines (on stdin) into where
the time ran: the kernel, libc, the host binary (wasmtp and wasmtime's runtime), and JIT-compiled
guest code (wasmtime's perf map names the guests' functions: a plugin's own functions carry its
crate name; the standard library's and the SDK's, which every plugin links, are counted
together). Prints the shares and the top symbols."""
import re
import sys
from collections import defaultdict

PLUGINS = {"address_rewriter": "address-rewriter", "header_stamper": "header-stamper",
           "content_guard": "content-guard"}
groups = defaultdict(float)
top = []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s*\|([^|]*)\|\[(.)\]\s+(.*)", line)
    if not m:
        continue
    share, dso, kind, sym = float(m[1]), m[2].strip(), m[3], m[4].strip()
    top.append((share, dso, sym))
    if kind == "k" or dso.startswith("[kernel"):
        group = "kernel"
    elif dso.startswith("[JIT]") or dso.startswith("perf-"):
        group = "guest code: standard library, SDK, bindings (any plugin)"
        for module, name in PLUGINS.items():
            if sym.startswith(module + "::"):
                group = f"guest code: {name}"
    elif dso.endswith(".cwasm"):
        # Named by the cache file's symbols (`wasm[0]::function[55]::_ZN13content_guard...`)
        # when perf finds them.
        group = "guest code from the compile cache: standard library, SDK, bindings, or unnamed"
        for module, name in PLUGINS.items():
            if re.search(r"\d" + module + r"\d", sym):
                group = f"guest code: {name}"
    elif dso.startswith("libc"):
        group = "libc"
    elif dso == "wasmtp":
        group = "host binary (wasmtp, wasmtime runtime)"
    else:
        group = dso
    groups[group] += share

print("| where | share of samples |")
print("|---|---|")
for group, share in sorted(groups.items(), key=lambda g: -g[1]):
    print(f"| {group} | {share:.1f} % |")
print()
print("| top symbols | dso | share |")
print("|---|---|---|")
for share, dso, sym in sorted(top, reverse=True)[:25]:
    print(f"| `{sym[:90]}` | {dso} | {share:.1f} % |")
