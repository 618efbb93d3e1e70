-- wrk script of the benchmark; tests/performance/loadgen.py sets the BENCH_* variables.
--
-- BENCH_MODE=chat : POST {"session_id": PREFIX..n, "message": MESSAGE}, n round-robin over
--                   0..BENCH_SESSIONS-1 (each thread its own residue class), or a new n for
--                   every request when BENCH_SESSIONS=0 (a session with no history).
-- BENCH_MODE=fixed: POST the bytes of BENCH_BODY_FILE (a provider request, sent to the stub).
-- BENCH_TOKEN    : sent as `Authorization: Bearer <token>` (the service's auth is on).
-- BENCH_STAGGER_MS: the first request of each connection waits a random 0..N ms, so that the
--                   clients of a slow provider do not all answer in lock-step waves.
-- done() prints one line, BENCH_RESULT {json}, that loadgen.py parses.

local mode = os.getenv("BENCH_MODE") or "chat"
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local sessions = tonumber(os.getenv("BENCH_SESSIONS") or "0")
local prefix = os.getenv("BENCH_PREFIX") or "s"
local message = os.getenv("BENCH_MESSAGE_JSON") or '"hello"'
local stagger_ms = tonumber(os.getenv("BENCH_STAGGER_MS") or "0")
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "1")

local created = 0
function setup(thread)
  thread:set("tid", created)
  created = created + 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN") or ""
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

if mode == "fixed" then
  local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
  wrk.body = file:read("*a")
  file:close()
else
  local counter = nil
  function request()
    if counter == nil then
      counter = tid
    end
    local n = counter
    if sessions > 0 then
      n = counter % sessions
    end
    counter = counter + threads
    local body = '{"session_id":"' .. prefix .. n .. '","message":' .. message .. '}'
    return wrk.format(nil, nil, nil, body)
  end
end

if stagger_ms > 0 then
  local first = math.ceil(connections / threads)
  local delayed = 0
  function init(args)
    math.randomseed(1 + tid)
  end
  function delay()
    if delayed < first then
      delayed = delayed + 1
      return math.random(0, stagger_ms)
    end
    return 0
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
