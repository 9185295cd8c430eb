-- (c) POST /api/v1/usage, every request for the same (hot) organization: one lock row for all.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

function request()
  headers["Idempotency-Key"] = next_key()
  local body = '{"organization":' .. hot .. ',"meter":"codex.local_task","quantity":"1"}'
  return wrk.format("POST", "/api/v1/usage", headers, body)
end
