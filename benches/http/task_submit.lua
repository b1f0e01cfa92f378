-- wrk script: task submissions (capability nobody serves: they wait as pending)
request = function()
  return wrk.format("POST", "/v1/tasks", {["Content-Type"] = "application/json"},
    '{"capability":"bench","payload":{"i":1}}')
end
