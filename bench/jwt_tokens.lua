-- wrk script of the jwt_cpu scenario: each request carries the next token of
-- the file named by LB_BENCH_TOKENS (one a line), so that every request has a
-- token lb has not verified yet. Each wrk thread starts at its own place.
local tokens = {}
local i = 0

function init(args)
  for line in io.lines(os.getenv("LB_BENCH_TOKENS")) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
  i = math.random(#tokens)
end

function request()
  i = i % #tokens + 1
  return wrk.format("GET", "/small", { ["Authorization"] = tokens[i] })
end
