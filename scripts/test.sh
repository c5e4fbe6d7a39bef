#!/usr/bin/env bash
# The README's second command (and all that CI runs): install what is
# missing, build, and run the whole test suite twice: once as built for
# users, once under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== build (warnings are errors)"
scripts/build.sh build -DTALLY_TESTS=ON
# Three tests at a time: most of the suite waits on sockets, timers and
# fsync, so two cores keep busy and the suite takes about a third as long.
echo "== tests"
ctest --test-dir build -j3 --output-on-failure --timeout 900

echo "== build with AddressSanitizer + UndefinedBehaviorSanitizer"
scripts/build.sh build-asan -DTALLY_TESTS=ON -DTALLY_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
echo "== tests under sanitizers"
# The same suite; the crash matrix at 60,000 events over 600 subjects and
# 8+ kills, its meters variant at 20,000 events (the plain run above is
# the full matrix: this one looks for memory errors on the same recovery
# paths).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
TALLY_CRASH_MATRIX_EVENTS=60000 TALLY_CRASH_MATRIX_SUBJECTS=600 \
TALLY_CRASH_MATRIX_KILLS=8 TALLY_CRASH_METERS_EVENTS=20000 \
  ctest --test-dir build-asan -j3 --output-on-failure --timeout 900

echo "== fuzz the parsers (40 s in all)"
scripts/fuzz.sh 40
