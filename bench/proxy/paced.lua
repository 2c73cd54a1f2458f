-- Paces each wrk connection: it waits DELAY_MS milliseconds before each request, so
-- connections x 1000 / DELAY_MS requests/s are offered (a little less: each also waits for its
-- answer).
local delay_ms = tonumber(os.getenv("DELAY_MS") or "10")

function delay()
  return delay_ms
end
