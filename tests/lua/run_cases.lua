-- Runs the Lua side's pure modules, as nginx loads them, over a file of cases and prints one JSON
-- answer; tests/support/lua.py calls it for the unit tests (no nginx needed).
-- Usage: luajit run_cases.lua LUA_DIR KIND CASES
--   pushes  CASES: [push body as JSON text, ...]  -> [{ok, reason}, ...]  (proxystack/contract.lua)
--   routes  CASES: {entries, requests: [[host, uri], ...]} -> [[service or null, path or null], ...]
--           (proxystack/routes.lua, as the router picks a request's route)
--   split   CASES: {keys, weight} -> [[murmur2 hash as text, in the canary's share], ...]
--   buckets CASES: [seconds, ...] -> {bounds: [le, ...], buckets: [index, ...]}
--           (proxystack/latency.lua, the histogram bucket of a request's time)
--   certnames CASES: {names, hosts} -> [[certificate name or null, covered], ...]
--           (proxystack/certnames.lua, which certificate a TLS handshake gets)
package.path = arg[1] .. "/?.lua;" .. package.path
local cjson = require "cjson.safe"
local contract = require "proxystack.contract"
local routes = require "proxystack.routes"
local latency = require "proxystack.latency"
local certnames = require "proxystack.certnames"

local f = assert(io.open(arg[3], "r"))
local cases = assert(cjson.decode(f:read("*a")))
f:close()

local out = {}
if arg[2] == "pushes" then
    for i, text in ipairs(cases) do
        local ok, reason = contract.check_push(cjson.decode(text))
        out[i] = {ok = ok == true, reason = reason or cjson.null}
    end
elseif arg[2] == "routes" then
    local index = routes.build(cases.entries)
    for i, r in ipairs(cases.requests) do
        local name, path = routes.find(index, r[1], r[2])
        out[i] = {name or cjson.null, path or cjson.null}
    end
elseif arg[2] == "split" then
    for i, key in ipairs(cases.keys) do
        out[i] = {string.format("%d", routes.murmur2(key)), routes.in_split(key, cases.weight)}
    end
elseif arg[2] == "buckets" then
    out = {bounds = latency.BUCKETS, buckets = {}}
    for i, took in ipairs(cases) do out.buckets[i] = latency.bucket(took) end
elseif arg[2] == "certnames" then
    local present = {}
    for _, n in ipairs(cases.names) do present[n] = true end
    for i, host in ipairs(cases.hosts) do
        out[i] = {certnames.pick(present, host) or cjson.null, certnames.covered(present, host)}
    end
else
    error("unknown kind " .. tostring(arg[2]) .. ": pushes, routes, split, buckets or certnames")
end
io.write(cjson.encode(out), "\n")
