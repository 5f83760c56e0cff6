#!/usr/bin/env bash
# What each benchmark plugin costs: the proxy without plugins, with each of address-rewriter,
# header-stamper and content-guard alone, and with the three together, in one run of
# bench/e2e.sh, at c=50 5 KiB and c=10 1 MiB. Prints the proxy CPU each adds per message and
# per MiB (the README's per-plugin cost table) and the +3 plugins / no plugins msg/s ratio.
#
#   bench/plugin-costs.sh            # REPS=3
#   REPS=1 bench/plugin-costs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export REPS=${REPS:-3}
export CASES=${CASES:-"50:5120:15000 10:1048576:600"}
WITH_EACH=1 WITH_HARAKA=${WITH_HARAKA:-0} exec bash bench/e2e.sh
