#!/usr/bin/env bash
# Configures and builds tally into build/ (or $1), warnings as errors.
# Extra arguments are passed to cmake's configure step. TALLY_BUILD_TARGET
# builds that target only (scripts/dev.sh: tally); default everything.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"
shift || true
cmake -S . -B "$build_dir" -DTALLY_WERROR=ON "$@" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" ${TALLY_BUILD_TARGET:+--target "$TALLY_BUILD_TARGET"}
