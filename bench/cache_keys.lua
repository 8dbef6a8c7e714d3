-- wrk script of the cache_disk scenario: each request asks for one of
-- LB_BENCH_KEYS objects at random (GET /cached100k?k=N), a working set larger
-- than lb's memory tier, so most hits come from the disk tier.
local keys = tonumber(os.getenv("LB_BENCH_KEYS"))

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  return wrk.format("GET", "/cached100k?k=" .. math.random(keys))
end
