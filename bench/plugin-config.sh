# Sourced by bench/e2e.sh and bench/profile.sh: the configuration of a benchmark proxy in front
# of smtp-sink (127.0.0.1:2526). Needs GUESTS (the guest build), W (work dir, for the compile
# cache) and XCLIENT_LINE ("xclient = false", or empty to leave XCLIENT on).
#
# The three benchmark plugins, one TOML block each: together in the +3 plugins proxy, and
# (e2e.sh WITH_EACH=1) each alone in a proxy of its own, for the per-plugin cost table.
PLUGIN_rewriter='[[plugins]]
name = "rewriter"
path = "'$GUESTS'/address_rewriter.wasm"
[plugins.config]
aliases = { "b@example.org" = "b@example.com", "team@example.org" = ["a@example.org", "b@example.org"] }'
PLUGIN_stamper='[[plugins]]
name = "stamper"
path = "'$GUESTS'/header_stamper.wasm"
[plugins.config]
add = { "X-Filtered-By" = "wasmtp" }'
PLUGIN_guard='[[plugins]]
name = "guard"
path = "'$GUESTS'/content_guard.wasm"'
plugin_config() { # port plugin... : a proxy configuration with these plugins
  local port=$1; shift
  cat <<CONF
[server]
listen = "127.0.0.1:$port"
hostname = "bench.localhost"
max_connections = 20000
[upstream]
url = "smtp://127.0.0.1:2526"
$XCLIENT_LINE
[sandbox]
cache_dir = "$W/cache"
[log]
level = "warn"
CONF
  local p block
  for p in "$@"; do block=PLUGIN_$p; printf '\n%s\n' "${!block}"; done
}
