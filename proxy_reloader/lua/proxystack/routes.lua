-- Which service a request is for: its host, then the longest path prefix, as nginx's server
-- names and prefix locations would choose. Plain Lua with no ngx API (tests/lua runs it under
-- luajit); router.lua keeps one index per worker and builds it again only when a route changed.
--
-- A route answers at each name of its hosts (an exact name, or *.DOMAIN for every name under
-- DOMAIN) and, with no hosts, on the default host: any name no route claims. A host picks its
-- routes exactly as nginx picks a server block: the exact name, else the longest wildcard, else
-- the default; its routes are the only ones tried (a host with no route at a path answers 404,
-- it does not fall back to the default host's routes).
local bit = require "bit"

local _M = {}

local SLASH = 47
local TWO32 = 4294967296
local M = 0x5bd1e995

-- a * b modulo 2^32, exactly (doubles hold 53 bits: multiply in 16-bit halves)
local function mul32(a, b)
    local alo, ahi = a % 65536, math.floor(a / 65536)
    local blo, bhi = b % 65536, math.floor(b / 65536)
    return (alo * blo + ((ahi * blo + alo * bhi) % 65536) * 65536) % TWO32
end

local function xor32(a, b)
    return bit.bxor(a, b) % TWO32
end

-- nginx's ngx_murmur_hash2 (MurmurHash2, seed 0), which its split_clients hashes the client
-- key with: the canary split of dynamic mode sends each client where reload mode's would.
function _M.murmur2(s)
    local len = #s
    local h = len % TWO32
    local i = 1
    while len >= 4 do
        local a, b, c, d = s:byte(i, i + 3)
        local k = mul32(a + b * 256 + c * 65536 + d * 16777216, M)
        k = mul32(xor32(k, bit.rshift(k, 24) % TWO32), M)
        h = xor32(mul32(h, M), k)
        i, len = i + 4, len - 4
    end
    if len == 3 then h = xor32(h, s:byte(i + 2) * 65536) end
    if len >= 2 then h = xor32(h, s:byte(i + 1) * 256) end
    if len >= 1 then h = mul32(xor32(h, s:byte(i)), M) end
    h = mul32(xor32(h, bit.rshift(h, 13) % TWO32), M)
    return xor32(h, bit.rshift(h, 15) % TWO32)
end

-- Whether a client key falls in the canary's `weight` percent, as split_clients decides it
-- ("W% canary; * stable;": the hash below W percent of 2^32 - 1, in whole units of 0.01 %).
function _M.in_split(key, weight)
    return _M.murmur2(key) < math.floor(weight * 100 * 4294967295 / 10000)
end

-- entries: service name -> pushed entry. Two services at one host and path: the first by name
-- keeps it (proxy-reloader leaves the second out before pushing; this only makes sure).
function _M.build(entries)
    local index = {exact = {}, wild = {}, default = {}}
    local names = {}
    for name in pairs(entries) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
        local route = entries[name].route or {}
        local path = route.path or ("/" .. name .. "/")
        local hosts = route.hosts
        if type(hosts) ~= "table" or #hosts == 0 then hosts = {""} end
        for _, host in ipairs(hosts) do
            local set, key
            if host == "" then
                set = index.default
            else
                if host:sub(1, 2) == "*." then set, key = index.wild, host:sub(3) else set, key = index.exact, host end
                local paths = set[key]
                if not paths then paths = {}; set[key] = paths end
                set = paths
            end
            if set[path] == nil then set[path] = name end
        end
    end
    return index
end

-- The routes (path -> service) of a host: the exact name's, the longest matching wildcard's,
-- or the default host's.
function _M.paths_for(index, host)
    local paths = index.exact[host]
    if paths then return paths end
    local domain = host
    while true do
        local dot = domain:find(".", 1, true)
        if not dot then break end
        domain = domain:sub(dot + 1)
        paths = index.wild[domain]
        if paths then return paths end
    end
    return index.default
end

-- (service, the route's path) for a request, or nil. The cost grows with the request path's
-- depth, never with the number of routes. A path that is a route's path without its final
-- slash gives (nil, that route's path): nginx answers such a request with a redirect.
function _M.find(index, host, uri)
    local paths = _M.paths_for(index, host)
    for i = #uri, 1, -1 do
        if uri:byte(i) == SLASH then
            local prefix = uri:sub(1, i)
            local name = paths[prefix]
            if name then return name, prefix end
        end
    end
    local slashed = uri .. "/"
    if paths[slashed] then return nil, slashed end
    return nil
end

return _M
