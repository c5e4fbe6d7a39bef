#!/usr/bin/env bash
# Configures and builds tally into build/ (or $1), warnings as errors.
# Extra arguments are passed to cmake's configure step. TALLY_BUILD_TARGET
# builds those targets only, separated by spaces (scripts/dev.sh: tally;
# scripts/fuzz.sh: the fuzz targets); default everything.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"
shift || true
cmake -S . -B "$build_dir" -DTALLY_WERROR=ON "$@" >/dev/null
# shellcheck disable=SC2086 # several targets split on spaces
cmake --build "$build_dir" -j"$(nproc)" ${TALLY_BUILD_TARGET:+--target $TALLY_BUILD_TARGET}
