#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need (redis-server,
# cargo-nextest when missing), then runs every test. Integration tests start their own
# redis-server on free loopback ports; nothing here touches a Redis on the default port.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian's packages"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The package starts a service on 6379 on some systems; the tests never use it.

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  cargo test --workspace --all-targets --no-fail-fast "$@"
fi
