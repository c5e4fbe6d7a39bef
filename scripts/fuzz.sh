#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang, ASan and
# UBSan, and runs them within a bounded total time: $1 seconds (default 90)
# split evenly across the targets (at least 5 s each), so adding a target
# never grows CI's fuzzing time.
# A crash, leak, sanitizer report or an input that runs over 10 s (a hang)
# fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-90}"
# Only the fuzz targets (not tally, the tests or the benchmarks again).
fuzz_targets=$(for f in tests/fuzz/fuzz_*.c; do basename "$f" .c; done)
TALLY_BUILD_TARGET="$(echo $fuzz_targets)" \
  scripts/build.sh build-fuzz -DCMAKE_C_COMPILER=clang -DTALLY_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug
targets=(build-fuzz/fuzz_*)
seconds=$(( total / ${#targets[@]} ))
[ "$seconds" -ge 5 ] || seconds=5
for target in "${targets[@]}"; do
  name=$(basename "$target")
  corpus="build-fuzz/corpus-$name"
  mkdir -p "$corpus"
  seeds="tests/fuzz/corpus/$name"   # checked-in seed inputs, if any
  [ -d "$seeds" ] || seeds=""
  echo "== fuzz $name for ${seconds}s"
  "$target" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -print_final_stats=1 \
    "$corpus" $seeds 2>&1 | tail -n 12
done
