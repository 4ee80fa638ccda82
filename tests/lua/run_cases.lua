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
--   kept    CASES: {room, values: [text, ...]} -> [[written, value read back or null], ...]
--           (proxystack/kept.lua, over a zone of `room` bytes that frees a key's old value before
--           it allocates a new one of another length, as nginx's shared dicts do)
--   generation CASES: {start, steps: [[what, n], ...]} -> [the page's generation after each step]
--           (proxystack/generation_page.lua; what: "write", "catch_up", or "write_in_child": a
--           forked process writes n and exits, as a worker forked by the master would)
package.path = arg[1] .. "/?.lua;" .. package.path
local cjson = require "cjson.safe"
local contract = require "proxystack.contract"
local routes = require "proxystack.routes"
local latency = require "proxystack.latency"
local certnames = require "proxystack.certnames"
local kept = require "proxystack.kept"
local ffi = require "ffi"

-- A shared dict of `room` bytes (the lengths of its values): a write of a key frees its old value
-- first, then fails with "no memory" when the new one does not fit.
local function zone(room)
    local values, used = {}, 0
    local z = {}
    local function write(self, key, value)
        if values[key] then used = used - #values[key]; values[key] = nil end
        if used + #value > room then return nil, "no memory" end
        values[key] = value
        used = used + #value
        return true, nil, false
    end
    z.set, z.safe_set = write, write
    function z.get(self, key) return values[key] end
    function z.delete(self, key)
        if values[key] then used = used - #values[key]; values[key] = nil end
    end
    return z
end

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
elseif arg[2] == "kept" then
    local dict = zone(cases.room)
    for i, value in ipairs(cases.values) do
        local ok = kept.set(dict, "names", value, true)
        out[i] = {ok == true, kept.get(dict, "names") or cjson.null}
    end
elseif arg[2] == "generation" then
    local page = require "proxystack.generation_page"
    ffi.cdef[[
    int fork(void);
    void _exit(int status);
    int waitpid(int pid, int *status, int options);
    ]]
    assert(page.map(cases.start), "no page mapped")
    for i, step in ipairs(cases.steps) do
        local what, n = step[1], step[2]
        if what == "write" then
            page.write(n)
        elseif what == "catch_up" then
            page.catch_up(n)
        elseif what == "write_in_child" then
            local pid = ffi.C.fork()
            if pid == 0 then
                page.write(n)
                ffi.C._exit(0)
            end
            assert(pid > 0 and ffi.C.waitpid(pid, nil, 0) == pid, "fork failed")
        else
            error("unknown step " .. tostring(what))
        end
        out[i] = page.read()
    end
else
    error("unknown kind " .. tostring(arg[2]) .. ": pushes, routes, split, buckets, certnames, kept or generation")
end
io.write(cjson.encode(out), "\n")
