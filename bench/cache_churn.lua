-- wrk script of the cache_churn scenario: every request a random key (a query
-- the origin ignores and lb's cache keys on), 70% of them for the 100-byte
-- object and 30% for the 100 KiB one, over LB_BENCH_KEYS keys (default
-- 200000): mostly misses that are stored and evict others.
local keys = 200000

function init(args)
  keys = tonumber(os.getenv("LB_BENCH_KEYS") or "200000")
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  local k = math.random(keys)
  if math.random() < 0.7 then
    return wrk.format("GET", "/cached?k=" .. k)
  end
  return wrk.format("GET", "/cached100k?k=" .. k)
end
