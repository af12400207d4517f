#!/usr/bin/env bash
# TLS benchmark, weir against nginx with the same certificate, in one run (see bench/tls.rs).
# Installs nginx from Debian's packages when missing (needs root; the bench, not CI, does this).
# Pins each proxy to core 1 and the load generator and backend to core 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light
fi
nginx -v 2>&1 || /usr/sbin/nginx -v
BENCH_WEIR_CPU=1 taskset -c 0 cargo bench --locked --bench tls
