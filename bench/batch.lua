-- (d) POST /api/v1/usage/batch with BENCH_BATCH_SIZE (1,000) events, each with its own key.
-- BENCH_BATCH_ORGS organizations per batch (default 1,000: one event per organization, all of
-- them locked by every batch), chosen at random from the 1,000.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")
count_events = true
local size = tonumber(os.getenv("BENCH_BATCH_SIZE") or "1000")
local per_batch = tonumber(os.getenv("BENCH_BATCH_ORGS") or "1000")

function request()
  headers["Idempotency-Key"] = nil
  local chosen = {}
  if per_batch >= #orgs then
    chosen = orgs
  else
    for i = 1, per_batch do
      chosen[i] = random_org()
    end
  end
  local parts = {}
  for i = 1, size do
    parts[i] = '{"organization":' .. chosen[(i - 1) % #chosen + 1] .. ',"meter":"codex.local_task","quantity":"1",'
      .. '"idempotency_key":"' .. next_key() .. '"}'
  end
  return wrk.format("POST", "/api/v1/usage/batch", headers, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
