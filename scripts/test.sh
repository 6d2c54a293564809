#!/usr/bin/env bash
# The test command (README). Installs what the tests need, then runs every test tier.
# Works on a fresh machine of this project's kind, as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

# Nothing beyond the Rust toolchain is needed yet; later tiers add their packages here, e.g.
#   need_apt haproxy
need_apt() {
  if ! dpkg -s "$1" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq "$1"
  fi
}

# Unit, data-driven and in-process tests, then the real-process cluster tests.
# Process tests start 3 nodes each; 4 test threads keep the 2-core box busy but not thrashing.
cargo test --lib --bins --tests --no-fail-fast -- --test-threads 4
