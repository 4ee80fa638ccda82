-- Runs proxystack/routes.lua, as nginx's router uses it, over a file of cases ({entries,
-- requests: [[host, uri], ...]}) and prints one JSON array of [service or null, path or null]:
-- tests/unit/test_lua_routes.py holds the answers to nginx's own rules for server names and
-- prefix locations. Usage: luajit find_routes.lua LUA_DIR CASES
package.path = arg[1] .. "/?.lua;" .. package.path
local cjson = require "cjson.safe"
local routes = require "proxystack.routes"

local f = assert(io.open(arg[2], "r"))
local cases = assert(cjson.decode(f:read("*a")))
f:close()
local index = routes.build(cases.entries)
local out = {}
for i, r in ipairs(cases.requests) do
    local name, path = routes.find(index, r[1], r[2])
    out[i] = {name or cjson.null, path or cjson.null}
end
io.write(cjson.encode(out), "\n")
