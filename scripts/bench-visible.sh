#!/usr/bin/env bash
# Event -> visible at a steady rate, as an operator would measure it (a
# command, not a test): `tally broker`, `tally run` with default flags,
# usage events paced at RATE per second through `tally emit` for SECONDS,
# then the processor's own histogram tally_event_visible_seconds (from a
# record's Kafka timestamp to the durable commit that makes it visible).
#
#   scripts/bench-visible.sh [rate] [seconds] [subjects] [config]
#                            (default 5000 60 20000 compose/tally.json)
#
# Two events in three are api_calls, one in three ai_tokens of one of the
# config's four models. Prints the histogram's p50 / p99 / p99.9 (as the
# upper bound of the bucket that holds them), the mean, and the synced
# commit's mean next to its own ceiling: the same machine's fsync of one
# small file. The first second's events (the processor's first fetch) are
# in the histogram too. Everything stays on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-5000}"
seconds="${2:-60}"
subjects="${3:-20000}"
config="${4:-compose/tally.json}"

command -v python3 >/dev/null || scripts/install-deps.sh
scripts/build.sh build >/dev/null

. scripts/bench-lib.sh
bench_begin bench-visible

bench_broker 16

build/tally run --brokers "$bootstrap" --state-dir "$work/state" \
  --config "$config" --no-auth --http 127.0.0.1:0 \
  --http-port-file "$work/port" >"$work/run.log" 2>&1 &
pids+=($!)
bench_wait_file "$work/port" 30
port=$(cat "$work/port")
bench_ready "$port"

echo "== $rate events/s for $seconds s over $subjects subjects, tally emit -> tally run (default flags)"
python3 - "$rate" "$seconds" "$subjects" <<'EOF' | build/tally emit --brokers "$bootstrap" --quiet
import json, sys, time
rate, seconds, subjects = (int(a) for a in sys.argv[1:4])
models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "gemini-flash"]
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = int((time.monotonic() - start) * rate)
    lines = []
    while n < due:
        event = {"event_id": "visible-%09d" % n, "subject": "user:u%d" % (n % subjects)}
        if n % 3 == 2:
            event.update(feature="ai_tokens", quantity=100 + n % 50, unit="token",
                         ai={"provider": "openai", "model": models[n % 4],
                             "input_tokens": 80, "output_tokens": 20 + n % 50})
        else:
            event.update(feature="api_calls", quantity=1, unit="call")
        lines.append(json.dumps(event))
        n += 1
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    time.sleep(0.002)
sys.stderr.write("sent %d events\n" % n)
EOF

# Every record folded (the histogram counts a record when its commit is
# durable), then the figures.
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
for _ in $(seq 1 300); do
  [ "$(metric tally_event_visible_seconds_count)" -ge $((rate * seconds * 99 / 100)) ] && break
  sleep 0.1
done
sync_ms=$(python3 -c '
import os, time
path = "'"$work"'/fsync-probe"
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
best = []
for _ in range(20):
    os.write(fd, b"x" * 4096)
    t = time.monotonic(); os.fsync(fd); best.append(time.monotonic() - t)
os.close(fd)
best.sort()
print("%.2f" % (1000 * best[len(best) // 2]))')
curl -s "http://127.0.0.1:$port/metrics" | awk -v sync_ms="$sync_ms" '
  /^tally_event_visible_seconds_bucket/ {
    match($1, /le="[^"]*"/); le = substr($1, RSTART + 4, RLENGTH - 5)
    bounds[n] = le; counts[n++] = $2 }
  $1 == "tally_event_visible_seconds_sum" { sum = $2 }
  $1 == "tally_event_visible_seconds_count" { count = $2 }
  $1 == "tally_commit_seconds_sum" { csum = $2 }
  $1 == "tally_commit_seconds_count" { ccount = $2 }
  $1 == "tally_events_folded_total" { folded = $2 }
  $1 == "tally_dead_letters_total" { dead = $2 }
  function at(q,   i) { for (i = 0; i < n; i++) if (counts[i] >= q * count) return bounds[i]; return "+Inf" }
  END {
    printf("records %d (folded %d, dead letters %d)\n", count, folded, dead)
    printf("event -> visible: p50 <= %s s, p99 <= %s s, p99.9 <= %s s, mean %.1f ms\n",
           at(0.5), at(0.99), at(0.999), count ? 1000 * sum / count : 0)
    if (ccount)
      printf("synced commits %d, mean %.2f ms; ceiling: one fsync of 4 KiB here %s ms (median of 20)\n",
             ccount, 1000 * csum / ccount, sync_ms)
    print "goal (issue 15): p99 <= 0.1 s at 5,000 events/s with default flags"
  }'
