#!/usr/bin/env bash
# System packages (redis-server, Node.js, chromium) and the Node OpAMP client the test suite drives. Idempotent; needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# The end-to-end failover test runs deploy/haproxy/haproxy.cfg in front of two gateways.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
# The web UI's browser tests (tests/ui) drive Debian's chromium; Playwright cannot download its own here.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

node_dir=tests/interop/node
if [ -f "$node_dir/package-lock.json" ] && [ ! -f "$node_dir/node_modules/.package-lock.json" -o "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
  echo "installing the Node OpAMP client (npm ci)"
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error
fi
