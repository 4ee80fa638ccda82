-- The backend table: what proxy-reloader pushed, held in a shared dict so every worker sees
-- the same generation, and decoded once per worker per change.
--
-- The JSON contract (proxy_reloader/backends.py documents and checks the same one):
--   push body   {"generation": N, "full": bool, "services": {NAME: ENTRY | null, ...}}
--   ENTRY       {"service": NAME, "stable": POOL | null, "canary": POOL | null, "weight": 0..100}
--   POOL        {"version": V, "servers": [[ADDRESS, PORT, VERSION], ...]}   (servers non-empty)
-- A push is checked whole before any of it is applied: one bad entry refuses all of it.
local cjson = require "cjson.safe"

local _M = {}

local dict = ngx.shared.proxystack_backends
local cache = {}            -- per worker: service -> {stamp = N, seen = generation, entry = table}

local NAME = "^[a-z0-9][a-z0-9_-]*$"
local VERSION = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"   -- "*" alone marks a pool of mixed versions
local ADDRESS = "^[A-Za-z0-9][A-Za-z0-9.:-]*$"
local MAX_NAME, MAX_SERVERS = 63, 4096

local function is_int(n, lo, hi)
    return type(n) == "number" and n == math.floor(n) and n >= lo and n <= hi
end

local function check_pool(pool, where)
    if pool == nil or pool == cjson.null then return true end
    if type(pool) ~= "table" then return nil, where .. " must be an object or null" end
    if type(pool.version) ~= "string" or #pool.version > 128
        or not (pool.version == "*" or pool.version:find(VERSION)) then
        return nil, where .. ".version is not a valid version"
    end
    local servers = pool.servers
    if type(servers) ~= "table" or #servers == 0 or #servers > MAX_SERVERS then
        return nil, where .. ".servers must list 1 to " .. MAX_SERVERS .. " servers"
    end
    for i, s in ipairs(servers) do
        if type(s) ~= "table" or type(s[1]) ~= "string" or #s[1] > 253 or not s[1]:find(ADDRESS)
            or not is_int(s[2], 1, 65535) or type(s[3]) ~= "string" or not s[3]:find(VERSION) then
            return nil, where .. ".servers[" .. i .. "] must be [address, port, version]"
        end
    end
    return true
end

-- nil, reason when `entry` breaks the contract.
function _M.check_entry(name, entry)
    if type(name) ~= "string" or #name > MAX_NAME or not name:find(NAME) then
        return nil, "service name " .. tostring(name) .. " is not valid"
    end
    if entry == cjson.null then return true end
    if type(entry) ~= "table" then return nil, name .. ": entry must be an object or null" end
    if entry.service ~= name then return nil, name .. ": entry.service must be " .. name end
    local ok, err = check_pool(entry.stable, name .. ".stable")
    if not ok then return nil, err end
    ok, err = check_pool(entry.canary, name .. ".canary")
    if not ok then return nil, err end
    if not is_int(entry.weight, 0, 100) then return nil, name .. ".weight must be an integer 0..100" end
    if entry.canary ~= nil and entry.canary ~= cjson.null and (entry.stable == nil or entry.stable == cjson.null) then
        return nil, name .. ": a canary needs a stable pool"
    end
    return true
end

-- Check a decoded push; nil, reason when it must be refused.
function _M.check_push(body)
    if type(body) ~= "table" then return nil, "body must be a JSON object" end
    if not is_int(body.generation, 1, 2^53) then return nil, "generation must be a positive integer" end
    if type(body.services) ~= "table" then return nil, "services must be an object" end
    for name, entry in pairs(body.services) do
        local ok, err = _M.check_entry(name, entry)
        if not ok then return nil, err end
    end
    return true
end

function _M.generation()
    return dict:get("generation") or 0
end

function _M.boot()
    return dict:get("boot") or ""
end

local function names()
    return cjson.decode(dict:get("names") or "[]") or {}
end

-- Apply a checked push. A full push replaces the table; otherwise only the named services change.
function _M.apply(body)
    local gen = body.generation
    local known = {}
    for _, n in ipairs(names()) do known[n] = true end
    if body.full then
        for n in pairs(known) do
            if body.services[n] == nil then
                dict:delete("svc:" .. n); dict:set("stamp:" .. n, gen); known[n] = nil
            end
        end
    end
    for name, entry in pairs(body.services) do
        if entry == cjson.null then
            dict:delete("svc:" .. name); known[name] = nil
        else
            -- Entry first, stamp second: a worker that sees the new stamp finds the new entry.
            local ok, err = dict:set("svc:" .. name, cjson.encode(entry))
            if not ok then return nil, "shared dict full (" .. tostring(err) .. "); raise proxystack_backends' size" end
            known[name] = true
        end
        dict:set("stamp:" .. name, gen)
    end
    local list = {}
    for n in pairs(known) do list[#list + 1] = n end
    table.sort(list)
    dict:set("names", cjson.encode(list))
    dict:set("generation", gen)
    return true
end

-- The entry of one service as this worker sees it (nil: nothing admitted, or unknown).
-- While the table's generation is the one this worker last checked, that is one read of a
-- constant key; after a push, each service's stamp says whether its entry changed.
function _M.get(service)
    local gen = dict:get("generation")
    local hit = cache[service]
    if hit and hit.seen == gen then return hit.entry end
    local stamp = dict:get("stamp:" .. service)
    if hit and hit.stamp == stamp then
        hit.seen = gen
        return hit.entry
    end
    local raw = dict:get("svc:" .. service)
    local entry = raw and cjson.decode(raw) or nil
    cache[service] = {stamp = stamp, seen = gen, entry = entry}
    return entry
end

function _M.all()
    local out = {}
    for _, n in ipairs(names()) do
        local raw = dict:get("svc:" .. n)
        if raw then out[n] = cjson.decode(raw) end
    end
    return out
end

-- At (re)load, in the master: load the table file written beside nginx.conf, unless the shared
-- dict (which survives a reload) already holds that generation or a newer one.
function _M.load_file(path)
    if not dict:get("boot") then
        dict:set("boot", string.format("%d-%d", ngx.time(), math.random(1, 2^30)))
    end
    local f = io.open(path, "r")
    if not f then return end
    local raw = f:read("*a")
    f:close()
    local body = cjson.decode(raw)
    local ok, err = _M.check_push(body)
    if not ok then
        ngx.log(ngx.ERR, "proxystack: ignoring ", path, ": ", err)
        return
    end
    if body.generation > _M.generation() then
        body.full = true
        _M.apply(body)
    end
end

return _M
