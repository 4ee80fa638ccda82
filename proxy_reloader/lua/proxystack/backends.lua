-- The backend table: what proxy-reloader pushed, held in a shared dict so every worker sees
-- the same generation, and decoded once per worker per change.
--
-- The JSON contract is contract.json beside this file (checked by contract.lua here and by
-- proxy_reloader/contract.py on the other side). A push is checked whole before any of it is
-- applied: one bad entry refuses all of it.
local cjson = require "cjson.safe"
local contract = require "proxystack.contract"
local generation_page = require "proxystack.generation_page"
local kept = require "proxystack.kept"

local _M = {}

local dict = ngx.shared.proxystack_backends
-- The generation counters in a dict of their own: a shared dict's lookup grows with its number
-- of keys, and this one holds three. Every request reads the generation, from the page the
-- master shares with the workers (generation_page) where there is one.
local state = ngx.shared.proxystack_state
local cache = {}            -- per worker: service -> {stamp = N, seen = generation, entry = table}

-- Whether a push keeps the contract (contract.lua, from the contract.json both sides read).
_M.check_entry = contract.check_entry
_M.check_push = contract.check_push

local read_page = generation_page.read

function _M.generation()
    return read_page() or state:get("generation") or 0
end

-- In the master, before it forks the workers: the page they read the generation from.
function _M.share_generation()
    return generation_page.map(state:get("generation") or 0)
end

-- Each worker, once a second (a timer): the page caught up with the dict, should a push have
-- missed it (generation_page.catch_up).
function _M.check_generation(premature)
    if not premature then generation_page.catch_up(state:get("generation") or 0) end
end

function _M.boot()
    return dict:get("boot") or ""
end

local function names()
    return cjson.decode(kept.get(dict, "names") or "[]") or {}
end

_M.names = names

-- The generation of the last push that changed a route (a service came or went, or its path,
-- names or settings changed): workers build their route index again only then.
function _M.routes_generation()
    return state:get("routes") or 0
end

-- Writes to the zone. `set`, which makes room by evicting the least recently used keys when the
-- zone is full: a refused write of a key that exists would free its old value all the same (the
-- shared dict frees it before it allocates the new one), so a table that no longer fits would
-- lose entries and even the list of names whichever way. Every eviction is counted instead, and
-- the push answered with an error saying so (proxy-reloader shows it in /status and its check).
local evicted, failed = 0, nil

local function put(key, value)
    local ok, err, forcible = dict:set(key, value)
    if not ok then
        failed = err
    elseif forcible then
        evicted = evicted + 1
    end
end

local FULL = "shared dict proxystack_backends is full: %s; services may answer 404 or 503 until "
    .. "it is larger (proxy-reloader --table-size)"

-- A service's route as last applied ("rt:" keys), to notice a push that changes routes.
local function set_route(name, entry)
    local old = dict:get("rt:" .. name)
    local new = entry and cjson.encode(entry.route or {}) or nil
    if old == new then return false end
    if new then put("rt:" .. name, new) else dict:delete("rt:" .. name) end
    return true
end

-- A service gone from the table: its entry, route and stamp deleted (a worker's cached stamp then
-- differs from the absent one, so it reads the entry again and finds none).
local function remove(name)
    dict:delete("svc:" .. name)
    dict:delete("stamp:" .. name)
    return set_route(name, nil)
end

-- Apply a checked push. A full push replaces the table; otherwise only the named services change.
-- nil and the reason when the zone had to evict entries to hold it, or could not hold a value.
function _M.apply(body)
    local gen = body.generation
    local known = {}
    local routes_changed = false
    evicted, failed = 0, nil
    for _, n in ipairs(names()) do known[n] = true end
    if body.full then
        for n in pairs(known) do
            if body.services[n] == nil then
                known[n] = nil
                routes_changed = remove(n) or routes_changed
            end
        end
    end
    for name, entry in pairs(body.services) do
        if entry == cjson.null then
            known[name] = nil
            routes_changed = remove(name) or routes_changed
        else
            -- Entry first, stamp second: a worker that sees the new stamp finds the new entry.
            put("svc:" .. name, cjson.encode(entry))
            known[name] = true
            routes_changed = set_route(name, entry) or routes_changed
            put("stamp:" .. name, gen)
        end
    end
    local list = {}
    for n in pairs(known) do list[#list + 1] = n end
    table.sort(list)
    local ok, why = kept.set(dict, "names", cjson.encode(list))
    if not ok then
        failed = why                    -- the list before this push stays
    elseif why then
        evicted = evicted + 1           -- room made for it by evicting others
    end
    if routes_changed then state:set("routes", gen) end
    state:set("generation", gen)
    generation_page.write(gen)
    if failed then return nil, string.format(FULL, "a value did not fit (" .. tostring(failed) .. ")") end
    if evicted > 0 then return nil, string.format(FULL, evicted .. " older entries were evicted to hold this push") end
    return true
end

-- The entry of one service as this worker sees it (nil: nothing admitted, or unknown).
-- While the table's generation is the one this worker last checked, that is one read of a
-- constant key (none when the caller read the generation already: `gen`); after a push, each
-- service's stamp says whether its entry changed.
function _M.get(service, gen)
    gen = gen or _M.generation()
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

-- An entry's servers by address as $upstream_addr spells them ("a:p", "[v6]:p") -> version; made
-- once per worker per entry (entries are replaced, never changed).
local function versions(entry)
    local by_address = entry._versions
    if by_address == nil then
        by_address = {}
        for _, side in ipairs({"stable", "canary"}) do
            local pool = entry[side]
            if type(pool) == "table" then
                for _, s in ipairs(pool.servers) do
                    local host = s[1]:find(":", 1, true) and ("[" .. s[1] .. "]") or s[1]
                    by_address[host .. ":" .. s[2]] = s[3]
                end
            end
        end
        entry._versions = by_address
    end
    return by_address
end

-- The version every server of an entry has, or false when they differ (a canary, a mixed pool).
local function only_version(entry)
    local only = entry._only_version
    if only == nil then
        for _, version in pairs(versions(entry)) do
            if only == nil then
                only = version
            elseif only ~= version then
                only = false
                break
            end
        end
        only = only or false
        entry._only_version = only
    end
    return only
end

-- The version of the server of `service` that answered: with one version among its servers (no
-- canary) that one, whichever server; else the one at the last address of $upstream_addr (every
-- server a request tried, "a:p, b:p", read only then), or nil. From the entry this worker last
-- read (the one the request was balanced by; an address keeps its version while it is listed).
function _M.version_of(service)
    local hit = cache[service]
    local entry = hit and hit.entry or _M.get(service)
    if entry == nil then return nil end
    local only = only_version(entry)
    if only then return only end
    local addresses = ngx.var.upstream_addr
    if addresses == nil then return nil end
    local by_address = versions(entry)
    local version = by_address[addresses]
    if version == nil and addresses:find(",", 1, true) then
        local last = addresses:match("([^%s,]+)%s*$")
        version = last and by_address[last]
    end
    return version
end

-- Whether the table lists `version` for `service`: the version of its stable or canary pool or of
-- any of their servers, or "none" (the proxy's own answers) for any service in the table. (The
-- metrics keep a version's series while this holds; the set is made once per worker per entry.)
function _M.lists(service, version)
    local entry = _M.get(service)
    if entry == nil then return false end
    if version == "none" then return true end
    local listed = entry._listed
    if listed == nil then
        listed = {}
        for _, v in pairs(versions(entry)) do listed[v] = true end
        for _, side in ipairs({"stable", "canary"}) do
            if type(entry[side]) == "table" then listed[entry[side].version] = true end
        end
        entry._listed = listed
    end
    return listed[version] == true
end

-- Every service's route, name -> {route = ...} (what routes.build reads of an entry), decoded from
-- the "rt:" keys and kept nowhere: a worker keeps only the index built from them, and decodes a
-- service's whole entry when a request asks for it. (Decoding every entry for the index kept each
-- worker's whole table in its Lua heap, 14 MB with 10,000 services, which every garbage collection
-- walks: 0.4 us more per request than with 10 services.)
function _M.routes()
    local out = {}
    for _, n in ipairs(names()) do
        local raw = dict:get("rt:" .. n)
        local route = raw and cjson.decode(raw)
        if type(route) == "table" then out[n] = {route = route} end
    end
    return out
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
        local certs = require "proxystack.certs"
        local stored, why = certs.store(body.certificates, true, body.generation)
        if stored then stored, why = certs.store_challenges(body.challenges, true) end
        if not stored then ngx.log(ngx.ERR, "proxystack: certificates of ", path, " not loaded: ", why) end
        local applied, why = _M.apply(body)
        if not applied then ngx.log(ngx.ERR, "proxystack: ", path, ": ", why) end
    end
end

return _M
