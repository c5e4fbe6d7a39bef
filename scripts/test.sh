#!/usr/bin/env bash
# The README's second command (and all that CI runs): install what is
# missing, build, and run the whole test suite twice: once as built for
# users, once under AddressSanitizer + UndefinedBehaviorSanitizer; then
# fuzz the parsers.
#
# Most of the suite waits (sockets, timers, Kafka rebalances, fsync), so
# work that computes runs beside it: the sanitizer build and the fuzzers
# build and run while the plain tests run (the builds niced, so the tests
# keep the CPU they need). Their output goes to a
# log printed when they are done; a failure anywhere fails the script, after
# every part has run (the summary at the end names the parts that failed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

began=$SECONDS
stage() { echo "== $* (at $((SECONDS - began)) s)"; }
logs=$(mktemp -d "${TMPDIR:-/tmp}/tally-test.XXXXXX")
background=()
# An interrupted or failed run leaves no build running behind it.
stop_background() {
  local pid
  for pid in "${background[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
}
trap stop_background EXIT
set -m # each background part in its own process group (killed whole above)
failed=()
# A background part's log without make's progress lines (warnings, errors
# and the fuzzers' figures stay).
quiet() { grep -v '^\[ *[0-9]*%\] ' "$1" || true; }

stage "build (warnings are errors)"
scripts/build.sh build -DTALLY_TESTS=ON

# The sanitizer build, then the fuzzers (their own clang build, then 40 s of
# fuzzing in all), beside the plain tests.
stage "building with AddressSanitizer + UndefinedBehaviorSanitizer, then fuzzing, in the background"
(
  nice -n 10 scripts/build.sh build-asan -DTALLY_TESTS=ON -DTALLY_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=Debug >"$logs/build-asan.log" 2>&1 || exit 1
  touch "$logs/build-asan.ok"
  scripts/fuzz.sh 40 >"$logs/fuzz.log" 2>&1 || exit 2
) &
background+=($!)
set +m

# Five tests at a time, in each stage: most of the suite waits (on 2 cores
# the sum of the tests' times hardly grows from 3 to 4 at a time), so two
# cores keep busy.
stage "tests"
ctest --test-dir build -j5 --output-on-failure --timeout 900 || failed+=("tests")

stage "waiting for the sanitizer build and the fuzzers"
rc=0
wait "${background[0]}" || rc=$?
background=()
stage "build with AddressSanitizer + UndefinedBehaviorSanitizer (log)"
if [ -f "$logs/build-asan.ok" ]; then
  quiet "$logs/build-asan.log"
else
  cat "$logs/build-asan.log"
  failed+=("sanitizer build")
fi
if [ -f "$logs/fuzz.log" ]; then
  stage "fuzz the parsers (40 s in all) (log)"
  quiet "$logs/fuzz.log"
fi
[ "$rc" -ne 2 ] || failed+=("fuzz")

if [ -f "$logs/build-asan.ok" ]; then
  stage "tests under sanitizers"
  # The same suite; the crash matrix at 60,000 events over 600 subjects and
  # 8+ kills, its meters variant at 20,000 events (the plain run above is
  # the full matrix: this one looks for memory errors on the same recovery
  # paths).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  TALLY_CRASH_MATRIX_EVENTS=60000 TALLY_CRASH_MATRIX_SUBJECTS=600 \
  TALLY_CRASH_MATRIX_KILLS=8 TALLY_CRASH_METERS_EVENTS=20000 \
    ctest --test-dir build-asan -j5 --output-on-failure --timeout 900 ||
    failed+=("tests under sanitizers")
fi

rm -rf "$logs"
if [ ${#failed[@]} -ne 0 ]; then
  stage "FAILED: ${failed[*]}"
  exit 1
fi
stage "all passed"
