#!/usr/bin/env bash
# The HTTP port's benchmark (a command, not a test): the quota pre-check
# over many subjects, next to the same server's /healthz rate measured in
# the same run as its ceiling.
#
#   scripts/bench-http.sh [subjects] [seconds] [connections] [wrk threads]
#                          (default 10000 15 4 1)
#
# Starts the embedded broker (`tally broker`), puts one usage event per
# subject into it with `tally emit`, starts `tally run` with a fresh API
# key, waits for /readyz, then runs wrk on loopback: /healthz, then
# GET /v1/subjects/user:bench-N/quota?feature=api_calls&quantity=1 with N
# rotating over every subject (scripts/bench-http.lua). Prints requests/s
# and p50/p99 latency of each and the ratio. Everything stays on 127.0.0.1
# and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
subjects="${1:-10000}"
seconds="${2:-15}"
connections="${3:-4}"
threads="${4:-1}"

command -v wrk >/dev/null || scripts/install-deps.sh
scripts/build.sh build >/dev/null

. scripts/bench-lib.sh
bench_begin bench-http

token="bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
token_sha256=$(printf %s "$token" | sha256sum | cut -d' ' -f1)

bench_broker 16

echo "== $subjects subjects: one usage event each, through tally emit"
awk -v n="$subjects" 'BEGIN { for (i = 0; i < n; i++)
  printf("{\"event_id\":\"bench-%d\",\"subject\":\"user:bench-%d\",\"feature\":\"api_calls\",\"quantity\":%d}\n", i, i, i % 900 + 1) }' \
  >"$work/events.jsonl"
build/tally emit --brokers "$bootstrap" --quiet <"$work/events.jsonl" >/dev/null

build/tally run --brokers "$bootstrap" --state-dir "$work/state" \
  --http 127.0.0.1:0 --http-port-file "$work/port" --tick-interval-ms 0 \
  --api-key-sha256 "$token_sha256" >"$work/run.log" 2>&1 &
pids+=($!)
bench_wait_file "$work/port" 30
port=$(cat "$work/port")
bench_ready "$port"
# Steady state: the alerts of the initial fold published and their acks
# committed (each commit invalidates the read cache), nothing left to do.
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
last=""
for _ in $(seq 1 300); do
  now="$(metric tally_outbox_entries) $(metric tally_batches_committed_total)"
  [ "${now%% *}" = 0 ] && [ "$now" = "$last" ] && break
  last="$now"
  sleep 1
done
curl -sf -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$port/v1/subjects/user:bench-1/quota?feature=api_calls&quantity=1" >/dev/null

run_wrk() { # path duration
  BENCH_SUBJECTS="$subjects" BENCH_PATH="$1" BENCH_TOKEN="$token" \
    wrk -t"$threads" -c"$connections" -d"$2"s --latency \
    -s scripts/bench-http.lua "http://127.0.0.1:$port" | grep '^RESULT'
}

quota_path='/v1/subjects/user:bench-{n}/quota?feature=api_calls&quantity=1'
echo "== warm-up (every subject read once into the cache)"
run_wrk "$quota_path" 3 >/dev/null
echo "== wrk -t$threads -c$connections -d${seconds}s on 127.0.0.1 ($(nproc) cores shared with the server)"
read -r _ h_rps h_p50 h_p99 h_n h_err < <(run_wrk /healthz "$seconds")
read -r _ q_rps q_p50 q_p99 q_n q_err < <(run_wrk "$quota_path" "$seconds")
hits=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/tally_http_state_cache_total\{result="hit"\}/ {print $2}')
misses=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/tally_http_state_cache_total\{result="miss"\}/ {print $2}')

awk -v hr="$h_rps" -v h50="$h_p50" -v h99="$h_p99" -v he="$h_err" \
    -v qr="$q_rps" -v q50="$q_p50" -v q99="$q_p99" -v qe="$q_err" \
    -v n="$subjects" -v hits="$hits" -v misses="$misses" 'BEGIN {
  printf("%-36s %12s %10s %10s %8s\n", "endpoint", "requests/s", "p50 (ms)", "p99 (ms)", "errors")
  printf("%-36s %12d %10.3f %10.3f %8d\n", "GET /healthz (ceiling)", hr, h50 / 1000, h99 / 1000, he)
  printf("%-36s %12d %10.3f %10.3f %8d\n", "GET /v1/subjects/{s}/quota, " n " subj.", qr, q50 / 1000, q99 / 1000, qe)
  printf("quota / ceiling: %.2f   (state cache: %s hits, %s misses)\n", qr / hr, hits, misses)
}'
