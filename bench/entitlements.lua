-- (e) GET /api/v1/organizations/{id}/entitlements for a random one of the 1,000 organizations.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/common.lua")

function request()
  headers["Idempotency-Key"] = nil
  headers["Content-Type"] = nil
  return wrk.format("GET", "/api/v1/organizations/" .. random_org() .. "/entitlements", headers)
end
