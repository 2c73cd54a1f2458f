-- Cycles through pre-signed deliveries (distinct deployment ids); wrk runs one thread.
local requests = {}
local n = 0
local index = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local sig, body = line:match("^([^\t]+)\t(.*)$")
    n = n + 1
    requests[n] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["X-GitHub-Event"] = "deployment",
      ["X-GitHub-Delivery"] = "bench-" .. n,
      ["X-Hub-Signature-256"] = sig,
    }, body)
  end
end

function request()
  index = index + 1
  if index > n then
    -- Out of distinct ids: stop rather than send duplicates.
    wrk.thread:stop()
    index = n
  end
  return requests[index]
end
