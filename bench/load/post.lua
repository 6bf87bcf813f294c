-- wrk script for the bench: POST a small chat.completions JSON with an Authorization header and
-- print one machine-readable line, "WRKJSON {...}", at the end (latencies in microseconds).
-- Environment: BENCH_MODEL (default "fake"), BENCH_API_KEY (a dummy key by default).
local model = os.getenv("BENCH_MODEL") or "fake"
local key = os.getenv("BENCH_API_KEY") or "sk-bench-not-a-real-key"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are terse."},'
    .. '{"role":"user","content":"Say hello to the benchmark, in one short sentence."}],'
    .. '"temperature":0,"max_tokens":32}'

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,'
            .. '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"lat_mean_us":%.1f,'
            .. '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_p999_us":%d,"lat_max_us":%d}\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
        e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9), latency.max))
end
