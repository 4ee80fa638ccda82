-- Runs proxystack/contract.lua, as nginx loads it, over a file of push bodies (a JSON array of
-- JSON texts) and prints one JSON array of {ok, reason}: tests/unit/test_push_contract.py
-- compares it with the Python side's answers. Usage: luajit check_pushes.lua LUA_DIR CASES
package.path = arg[1] .. "/?.lua;" .. package.path
local cjson = require "cjson.safe"
local contract = require "proxystack.contract"

local f = assert(io.open(arg[2], "r"))
local texts = assert(cjson.decode(f:read("*a")))
f:close()
local out = {}
for i, text in ipairs(texts) do
    local body = cjson.decode(text)
    local ok, reason = contract.check_push(body)
    out[i] = {ok = ok == true, reason = reason or cjson.null}
end
io.write(cjson.encode(out), "\n")
