-- wrk script: POST one chat completion body; print the figures as one JSON line at the end.
-- (`status_errors` counts answers with status >= 400: a bench run with any is not a valid figure.)
-- The body and the key come from the environment (set by bench/run.py): BENCH_BODY_FILE (a file, for
-- bodies larger than an environment variable may be) or BENCH_BODY.
wrk.method = "POST"
local file = os.getenv("BENCH_BODY_FILE")
if file and file ~= "" then
  local f = assert(io.open(file, "rb"))
  wrk.body = f:read("*a")
  f:close()
else
  wrk.body = os.getenv("BENCH_BODY") or '{"model":"gpt-bench","messages":[{"role":"user","content":"Say hello"}]}'
end
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

done = function(summary, latency, requests)
  -- latency figures are in microseconds.
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
