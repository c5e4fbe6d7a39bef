#!/usr/bin/env bash
# The README's first command: install what is missing, build, and start
# `tally dev --demo` (embedded Kafka broker, processor, HTTP port, demo feed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
exec build/tally dev --demo "$@"
