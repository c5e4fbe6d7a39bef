-- wrk script of scripts/bench-http.sh: GETs BENCH_PATH for one subject after
-- another (user:bench-0 .. user:bench-(BENCH_SUBJECTS-1)), with the bearer
-- token, and prints one machine-readable RESULT line at the end.
local subjects = tonumber(os.getenv("BENCH_SUBJECTS") or "10000")
local template = os.getenv("BENCH_PATH") or "/healthz"
local headers = {["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")}
local threads = {}
local next_offset = 0

function setup(thread)
  thread:set("offset", next_offset)
  next_offset = next_offset + 7
  table.insert(threads, thread)
end

local counter = 0
request = function()
  -- A stride coprime with most subject counts walks all of them.
  local subject = ((counter * 7919) + (offset or 0)) % subjects
  counter = counter + 1
  local path = string.gsub(template, "{n}", tostring(subject))
  return wrk.format("GET", path, headers)
end

done = function(summary, latency, requests)
  local seconds = summary.duration / 1000000
  local errors = summary.errors.connect + summary.errors.read +
                 summary.errors.write + summary.errors.timeout +
                 summary.errors.status
  io.write(string.format("RESULT %.0f %.0f %.0f %d %d\n",
                         summary.requests / seconds, latency:percentile(50),
                         latency:percentile(99), summary.requests, errors))
end
