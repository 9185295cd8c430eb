-- (b) POST /api/v1/usage, each request for a random one of the 1,000 organizations.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

function request()
  headers["Idempotency-Key"] = next_key()
  local body = '{"organization":' .. random_org() .. ',"meter":"codex.local_task","quantity":"1"}'
  return wrk.format("POST", "/api/v1/usage", headers, body)
end
