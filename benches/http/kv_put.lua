-- wrk script: knowledge writes, a distinct key per request
local counter = 0
local thread_id = math.random(1, 1000000)
request = function()
  counter = counter + 1
  local path = "/v1/kv/bench/k" .. thread_id .. "-" .. counter
  return wrk.format("PUT", path, {["Content-Type"] = "application/json"}, '{"i":' .. counter .. '}')
end
