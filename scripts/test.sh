#!/usr/bin/env bash
# The README's second command (and all that CI runs): install what is
# missing, build, and run the whole test suite twice: once as built for
# users, once under AddressSanitizer + UndefinedBehaviorSanitizer; and fuzz
# the parsers.
#
# Most of the suite waits (sockets, timers, Kafka rebalances, fsync), so
# work that computes runs beside it: the sanitizer build (niced, so the
# tests keep the CPU they need) while the plain tests run, then the
# fuzzers' build and their 40 s (the sanitizer tests start once their build
# is done, whether the fuzzers are or not). A background
# part's output goes to a log, printed when its turn comes. A failure
# anywhere fails the script, after every part has run; the last line names
# the parts that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

began=$SECONDS
stage() { echo "== $* (at $((SECONDS - began)) s)"; }
logs=$(mktemp -d "${TMPDIR:-/tmp}/tally-test.XXXXXX")
background=()
# An interrupted or failed run leaves nothing running behind it.
stop_background() {
  local pid
  for pid in "${background[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap stop_background EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
failed=()
# A background part's log without make's progress lines (warnings, errors
# and the fuzzers' figures stay).
quiet() { grep -v '^\[ *[0-9]*%\] ' "$1" || true; }

stage "build (warnings are errors)"
scripts/build.sh build -DTALLY_TESTS=ON

stage "building with AddressSanitizer + UndefinedBehaviorSanitizer, then the fuzzers, in the background"
set -m # the background part in its own process group (stopped whole above)
(
  rc=0
  nice -n 10 scripts/build.sh build-asan -DTALLY_TESTS=ON -DTALLY_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=Debug >"$logs/build-asan.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/build-asan.rc.new"
  mv "$logs/build-asan.rc.new" "$logs/build-asan.rc"
  [ "$rc" -eq 0 ] || exit 1
  scripts/fuzz.sh 40 >"$logs/fuzz.log" 2>&1 || exit 2
) &
background+=($!)
set +m

# Four tests at a time: most of the suite waits (on 2 cores the sum of the
# tests' own times hardly grows from 3 to 4 at a time), so two cores keep
# busy, and the background part (which needs a core for its builds and its
# fuzzing) is done before these tests are. Five at a time: the plain tests
# are faster, but then the fuzzers run beside the sanitizer tests, at a
# third of their executions; and under the sanitizers the tests' time grows
# (CPU-bound) and once starved test_crash_meters' fault runs of their
# alerts (README, Tests).
stage "tests"
ctest --test-dir build -j4 --output-on-failure --timeout 900 ||
  failed+=("tests")

stage "waiting for the sanitizer build"
while [ ! -e "$logs/build-asan.rc" ] && kill -0 "${background[0]}" 2>/dev/null; do
  sleep 1
done
stage "build with AddressSanitizer + UndefinedBehaviorSanitizer (its log)"
if [ "$(cat "$logs/build-asan.rc" 2>/dev/null)" = 0 ]; then
  quiet "$logs/build-asan.log"
  stage "tests under sanitizers"
  # The same suite; the crash matrix at 60,000 events over 600 subjects and
  # 8+ kills, its meters variant at 20,000 events (the plain run above is
  # the full matrix: this one looks for memory errors on the same recovery
  # paths).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  TALLY_CRASH_MATRIX_EVENTS=60000 TALLY_CRASH_MATRIX_SUBJECTS=600 \
  TALLY_CRASH_MATRIX_KILLS=8 TALLY_CRASH_METERS_EVENTS=20000 \
    ctest --test-dir build-asan -j4 --output-on-failure --timeout 900 ||
    failed+=("tests under sanitizers")
else
  cat "$logs/build-asan.log" 2>/dev/null || true
  failed+=("sanitizer build")
fi

stage "waiting for the fuzzers"
rc=0
wait "${background[0]}" || rc=$?
background=()
if [ -e "$logs/fuzz.log" ]; then
  stage "fuzz the parsers (40 s in all) (its log)"
  quiet "$logs/fuzz.log"
fi
[ "$rc" -ne 2 ] || failed+=("fuzz")

if [ ${#failed[@]} -ne 0 ]; then
  list=$(printf '%s, ' "${failed[@]}")
  stage "FAILED: ${list%, }"
  exit 1
fi
stage "all passed"
