#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang, ASan and
# UBSan, and runs each for a bounded time (default 30 s, or $1 seconds):
# the total is that times the number of targets (3 today: 90 s in CI).
# A crash, leak or sanitizer report fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
scripts/build.sh build-fuzz -DCMAKE_C_COMPILER=clang -DTALLY_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug
for target in build-fuzz/fuzz_*; do
  name=$(basename "$target")
  corpus="build-fuzz/corpus-$name"
  mkdir -p "$corpus"
  seeds="tests/fuzz/corpus/$name"   # checked-in seed inputs, if any
  [ -d "$seeds" ] || seeds=""
  echo "== fuzz $name for ${seconds}s"
  "$target" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
    "$corpus" $seeds 2>&1 | tail -n 12
done
