-- wrk script: random orders posted to `redstage serve`, each an inventory
-- deduct and a payment, as `scripts/wrk.sh` runs it. WORKLOAD=shop (the
-- default: 1,000 SKUs, 100 customers, 10 merchants) or WORKLOAD=flash (one
-- SKU, one merchant). Counts the outcomes by status and abort code.

local flash = os.getenv("WORKLOAD") == "flash"
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  committed, aborted, conflicts, failed = 0, 0, 0, 0
end

function request()
  local sku = flash and 0 or math.random(0, 999)
  local merchant = flash and 0 or math.random(0, 9)
  local body = string.format(
    '{"steps":[{"participant":"inventory","input":{"op":"deduct","sku":"sku%d","qty":%d}},'
      .. '{"participant":"payments","input":{"op":"transfer","from":"c%d","to":"m%d","amount":%d}}]}',
    sku, math.random(1, 3), math.random(0, 99), merchant, math.random(1, 10))
  return wrk.format("POST", "/v1/transactions", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
  elseif string.find(body, '"status":"committed"', 1, true) then
    committed = committed + 1
  elseif string.find(body, '"code":"conflict"', 1, true) then
    conflicts = conflicts + 1
  else
    aborted = aborted + 1
  end
end

function done(summary, latency, requests)
  local c, a, x, f = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("committed")
    a = a + t:get("aborted")
    x = x + t:get("conflicts")
    f = f + t:get("failed")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "redstage: %d committed (%.0f/s), %d aborted, %d gave up on conflict, %d errors; "
      .. "latency p50 %.2f ms, p99 %.2f ms\n",
    c, c / seconds, a, x, f, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
