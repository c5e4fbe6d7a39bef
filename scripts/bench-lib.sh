# shellcheck shell=bash
# Sourced by the benchmark scripts (scripts/bench-http.sh,
# scripts/bench-visible.sh): a scratch directory and the processes started
# in it, both gone when the script exits, and the embedded broker.
#
#   bench_begin NAME         $work, $pids, the exit trap
#   bench_wait_file PATH S   waits up to S seconds for PATH to be non-empty
#   bench_broker PARTITIONS  starts `tally broker`; sets $bootstrap
#   bench_ready PORT         waits up to 60 s for /readyz to answer 200

bench_begin() {
  bench_name="$1"
  work=$(mktemp -d "/tmp/tally-$1-XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}

bench_wait_file() { # path seconds
  for _ in $(seq 1 $(($2 * 10))); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  echo "$bench_name: timed out waiting for $1" >&2
  return 1
}

bench_broker() { # partitions
  build/tally broker --partitions "$1" --bootstrap-file "$work/bootstrap" \
    >"$work/broker.log" 2>&1 &
  pids+=($!)
  bench_wait_file "$work/bootstrap" 30
  # shellcheck disable=SC2034 # read by the caller
  bootstrap=$(cat "$work/bootstrap")
}

bench_ready() { # port
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  echo "$bench_name: /readyz did not answer 200 within 60 s" >&2
  return 1
}
