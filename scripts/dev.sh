#!/usr/bin/env bash
# The README's first command: install only what building and running tally
# needs, build only the tally binary (no tests, no benchmarks), and start
# `tally dev --demo` (embedded Kafka broker, processor, HTTP port, demo
# feed). scripts/test.sh installs and builds the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh dev
TALLY_BUILD_TARGET=tally scripts/build.sh build
exec build/tally dev --demo "$@"
