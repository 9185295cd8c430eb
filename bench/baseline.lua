-- (a) The baseline: same auth, headers and JSON body as a usage call; the view inserts one row.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

function request()
  headers["Idempotency-Key"] = next_key()
  local body = '{"organization":' .. random_org() .. ',"meter":"codex.local_task","quantity":"1"}'
  return wrk.format("POST", "/api/v1/bench/baseline", headers, body)
end
