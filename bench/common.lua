-- Shared by every phase: auth, unique idempotency keys, status counting, and a JSON summary.
-- Environment: BENCH_TOKEN, BENCH_ORGS (comma-separated ids), BENCH_HOT, BENCH_RUN (a run id).

local token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
run_id = os.getenv("BENCH_RUN") or tostring(os.time())
orgs = {}
for id in string.gmatch(os.getenv("BENCH_ORGS") or "", "%d+") do
  orgs[#orgs + 1] = id
end
hot = os.getenv("BENCH_HOT") or orgs[1]

headers = {
  ["Authorization"] = "Bearer " .. token,
  ["Content-Type"] = "application/json",
}

local threads = {}
local counter = 0

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

-- Per-thread counters (globals, so done() can read them with thread:get).
n2xx, n402, n4xx, n5xx, nother = 0, 0, 0, 0, 0
ev2xx, ev402, evother = 0, 0, 0

function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
end

function next_key()
  counter = counter + 1
  return string.format("%s-%d-%d-%d", run_id, thread_id, counter, math.random(0, 999999999))
end

function random_org()
  return orgs[math.random(1, #orgs)]
end

function count_status(status)
  if status >= 200 and status < 300 then
    n2xx = n2xx + 1
  elseif status == 402 then
    n402 = n402 + 1
  elseif status >= 500 then
    n5xx = n5xx + 1
  elseif status >= 400 then
    n4xx = n4xx + 1
  else
    nother = nother + 1
  end
end

function response(status, headers, body)
  count_status(status)
  if count_events and status == 200 then
    for s in string.gmatch(body, '"status":(%d+)') do
      local code = tonumber(s)
      if code >= 200 and code < 300 then
        ev2xx = ev2xx + 1
      elseif code == 402 then
        ev402 = ev402 + 1
      else
        evother = evother + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local t = {n2xx = 0, n402 = 0, n4xx = 0, n5xx = 0, nother = 0, ev2xx = 0, ev402 = 0, evother = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + (thread:get(k) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"n2xx":%d,"n402":%d,"n4xx":%d,"n5xx":%d,"nother":%d,"ev2xx":%d,"ev402":%d,"evother":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"status_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, t.n2xx, t.n402, t.n4xx, t.n5xx, t.nother, t.ev2xx, t.ev402, t.evother,
    e.connect, e.read, e.write, e.timeout, e.status))
end
