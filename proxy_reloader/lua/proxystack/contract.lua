-- The push contract, read from contract.json beside this file: the file proxy-reloader's
-- proxy_reloader/contract.py reads too. Both check a push by the same rules and word a refusal
-- the same way (tests/unit/test_push_contract.py runs one list of cases through both). Plain
-- Lua with cjson: no ngx API here, so it runs under luajit as well as inside nginx.
local cjson = require "cjson.safe"

local _M = {}

local function here()
    local source = debug.getinfo(1, "S").source
    return source:sub(1, 1) == "@" and source:sub(2):match("^(.*/)") or "./"
end

local function read_contract()
    local path = here() .. "contract.json"
    local f = assert(io.open(path, "r"), "proxystack: cannot read the push contract " .. path)
    local raw = f:read("*a")
    f:close()
    return assert(cjson.decode(raw), "proxystack: the push contract " .. path .. " is not JSON")
end

local C = read_contract()
_M.contract = C

-- 'a-z0-9._-' -> a lookup table of the bytes it names: x-y is a range, anything else itself.
local function char_set(spec)
    local set, i = {}, 1
    while i <= #spec do
        if i + 2 <= #spec and spec:sub(i + 1, i + 1) == "-" then
            for b = spec:byte(i), spec:byte(i + 2) do set[b] = true end
            i = i + 3
        else
            set[spec:byte(i)] = true
            i = i + 1
        end
    end
    return set
end

local names = {}
for kind, r in pairs(C.names) do
    names[kind] = {first = char_set(r.first), chars = char_set(r.chars), last = char_set(r.last or r.chars),
                   max = r.max}
end

function _M.name_ok(kind, value)
    local r = names[kind]
    if type(value) ~= "string" or #value < 1 or #value > r.max then return false end
    if not r.first[value:byte(1)] or not r.last[value:byte(#value)] then return false end
    for i = 1, #value do
        if not r.chars[value:byte(i)] then return false end
    end
    return true
end

-- cjson decodes a JSON array and an object alike, into a table: one with a first element was
-- an array (an empty array is an empty object here, and refused for what it lacks).
local function object(t)
    return type(t) == "table" and t[1] == nil
end

local function int_in(n, bounds)
    return type(n) == "number" and n == math.floor(n) and n >= bounds[1] and n <= bounds[2]
end

local function check_pool(pool, where)
    if pool == nil or pool == cjson.null then return true end
    if not object(pool) then return nil, where .. " must be an object or null" end
    if not (pool.version == C.mixed_version or _M.name_ok("version", pool.version)) then
        return nil, where .. ".version is not a valid version"
    end
    local servers, least, most = pool.servers, C.servers[1], C.servers[2]
    if type(servers) ~= "table" or #servers < least or #servers > most then
        return nil, where .. ".servers must list " .. least .. " to " .. most .. " servers"
    end
    for i, s in ipairs(servers) do
        if type(s) ~= "table" or #s ~= 3 or not _M.name_ok("address", s[1]) or not int_in(s[2], C.port)
            or not _M.name_ok("version", s[3]) then
            return nil, where .. ".servers[" .. i .. "] must be [address, port, version]"
        end
    end
    return true
end

-- nil, reason when `entry` breaks the contract.
function _M.check_entry(name, entry)
    if not _M.name_ok("service", name) then
        return nil, "service name " .. tostring(name) .. " is not valid"
    end
    if entry == cjson.null then return true end
    if not object(entry) then return nil, name .. ": entry must be an object or null" end
    if entry.service ~= name then return nil, name .. ": entry.service must be " .. name end
    local ok, err = check_pool(entry.stable, name .. ".stable")
    if not ok then return nil, err end
    ok, err = check_pool(entry.canary, name .. ".canary")
    if not ok then return nil, err end
    if not int_in(entry.weight, C.weight) then
        return nil, name .. ".weight must be an integer " .. C.weight[1] .. ".." .. C.weight[2]
    end
    local absent = function(p) return p == nil or p == cjson.null end
    if not absent(entry.canary) and absent(entry.stable) then
        return nil, name .. ": a canary needs a stable pool"
    end
    return true
end

-- A decoded push: true, or nil and the reason it must be refused whole.
function _M.check_push(body)
    if not object(body) then return nil, "body must be a JSON object" end
    if not int_in(body.generation, C.generation) then return nil, "generation must be a positive integer" end
    if not object(body.services) then return nil, "services must be an object" end
    local sorted = {}
    for name in pairs(body.services) do sorted[#sorted + 1] = name end
    table.sort(sorted, function(a, b) return tostring(a) < tostring(b) end)
    for _, name in ipairs(sorted) do
        local ok, err = _M.check_entry(name, body.services[name])
        if not ok then return nil, err end
    end
    return true
end

return _M
