#!/usr/bin/env bash
# The load generator's smoke run: builds the release binaries it runs (herald and herald-load;
# not the mock platform, which no scenario uses: their sink is in herald-load), then runs every
# scenario and baseline at small counts (under 2 minutes once built). Each scenario starts its
# own redis-server and herald on free loopback ports and stops them when it ends.
# Results: load-tests/results/{<scenario>.json,<scenario>.svg,summary.md}.
# Extra arguments go to herald-load (e.g. --herald-bin PATH, --redis-server PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server from Debian's packages"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

cargo build --release -p herald -p herald-load
exec target/release/herald-load "$@" smoke
