-- Per request: which route it is for (by host and path), whether the route lets it through
-- (listener, client network, rate, body size), which pool serves it (stable or canary), then which server of
-- that pool, with the route's timeouts and retries. Every decision about *who is admitted* and
-- *what is routed where* was made by proxy-reloader and pushed; this only picks.
local ffi = require "ffi"
local balancer = require "ngx.balancer"
local base = require "resty.core.base"
local backends = require "proxystack.backends"
local certs = require "proxystack.certs"
local contract = require "proxystack.contract"
local routes = require "proxystack.routes"
local clear = require "table.clear"
local nkeys = require "table.nkeys"

local _M = {}

-- per worker: a pool's server list -> the index it last used (round robin). Keyed by the list
-- itself, which a push replaces, so a changed pool starts afresh and an old one is collected.
local rr = setmetatable({}, {__mode = "k"})
-- A route's defaults, for the settings its labels leave out (catalog/route_settings.py).
local DEFAULT_RETRIES = 2               -- a dead peer costs a retry, not an error
local DEFAULT_BODY_SIZE = 1024 * 1024   -- as nginx's client_max_body_size default
local NO_ROUTE = {}

-- Rate limits: per route and client address, how far ahead of its route's rate the client is
-- ("excess:last ms"), as nginx's limit_req with nodelay counts it: a request passes while the
-- excess stays within the burst; the one past it is answered 429 and not counted.
local limits = ngx.shared.proxystack_limits

local function over_limit(name, limit)
    local key = name .. "|" .. ngx.var.binary_remote_addr
    local now = ngx.now() * 1000
    local excess = 0
    local kept = limits:get(key)
    if kept then
        local e, last = kept:match("^([^:]+):(.+)$")
        excess = math.max(tonumber(e) - limit.rate * (now - tonumber(last)) / 1000 + 1, 0)
        if excess > limit.burst then return true end
    end
    -- forgotten once the client has been idle long enough for its excess to drain
    limits:set(key, string.format("%.3f:%.3f", excess, now), (excess + 1) / limit.rate + 1)
    return false
end

-- Per worker, what a request needs once it has read the table's generation, kept until the
-- generation moves on: the route index (built again only when a route changed) and each request
-- host and path's route as the index answered it. (Entries: backends.get's own cache, given the
-- generation read here.)
local seen, index, index_gen = nil, nil, nil
local found, nfound = {}, 0     -- "$host$uri" -> {service, path, host, uri}
local MAX_FOUND = 20000         -- then forgotten and found again
local MAX_KEY = 512             -- a longer host + path is looked up, not kept (any client may send any)

-- The Lua heap. Each request leaves garbage behind (nginx's Lua module makes a closure at each
-- entry into Lua: about 150 bytes a proxied request), and with the collector's default pause a
-- cycle starts each time the heap has doubled: every few thousand requests a cycle walks all that
-- is alive, the index of 10,000 routes included (~2 MB, more than a core's cache holds), and the
-- requests around it pay for it. And building the index leaves ~2 KB of garbage a route. So once
-- an index was built, the worker's upkeep collects in full, and then lets the heap grow by
-- GC_ROOM_KB before the next cycle starts, whatever the number of routes (at least the default
-- doubling): a worker's heap stays under what is alive plus that room.
local GC_ROOM_KB = 16 * 1024
local built = false             -- an index was built since the last upkeep

local function refresh()
    local gen = backends.generation()
    if gen == seen then return end
    local rgen = backends.routes_generation()
    if index == nil or index_gen ~= rgen then
        index = routes.build(backends.routes())
        index_gen = rgen
        found, nfound = {}, 0
        built = true
    end
    certs.refresh()
    seen = gen
end

local get_request = base.get_request

-- Per worker: each request being served (by its address, request_key) -> what the router answered
-- for it (a service's name or a "!" code), which the balancer and the log phase read back.
-- Reading $proxystack_route instead costs a variable lookup by name (lower-cased and hashed)
-- each time: about 0.15 us a read, two reads a proxied request. Written by every call of the
-- router, so a slot never holds an older request's answer; emptied when the request ends (taken).
local routed = {}
-- Should slots ever be left (a request that ended with no log phase), the table is emptied past
-- this many (upkeep); the requests in flight then read $proxystack_route instead.
local MAX_ROUTED = 20000

-- The running request's address as a number: a table key (the request pointer itself, a cdata,
-- would be a new key at each call).
local uintptr = ffi.typeof("uintptr_t")

local function request_key()
    return tonumber(ffi.cast(uintptr, get_request()))
end

-- What the router answered for the running request ($proxystack_route when the slot is gone).
local function routed_name()
    return routed[request_key()] or ngx.var.proxystack_route
end

-- The same in the log phase, which ends the request's slot.
function _M.take()
    local r = request_key()
    local name = routed[r]
    if name == nil then return ngx.var.proxystack_route end
    routed[r] = nil
    return name
end

-- The collector's pause (percent of the heap alive after a cycle that the heap may reach before
-- the next one starts) that leaves GC_ROOM_KB of room above `alive` KB, the default 200 at least.
local function gc_pause(alive)
    return math.max(200, math.floor(100 * (alive + GC_ROOM_KB) / math.max(alive, 1)))
end

-- The router's upkeep (a timer of its own calls it once a second): empties the slots should they
-- be more than requests can be in flight; after an index was built, collects the garbage and sets
-- the pause from what is alive (GC_ROOM_KB).
function _M.upkeep()
    if nkeys(routed) > MAX_ROUTED then clear(routed) end
    if built then
        built = false
        collectgarbage()
        collectgarbage("setpause", gc_pause(collectgarbage("count")))
    end
end

-- Where plain HTTP is redirected to: the TLS listener's port ("" for 443, nil: no TLS listener).
local https_suffix = nil

function _M.configure(options)
    local port = options.https_port
    if port == nil or port == "" then
        https_suffix = nil
    else
        https_suffix = (tostring(port) == "443") and "" or (":" .. port)
    end
end

-- How a route is served over plain HTTP: its proxy.https, else "redirect" when a certificate
-- covers the host (and a TLS listener exists), else "off" (served over HTTP).
local function https_mode(route, host)
    local mode = route.https
    if mode == nil then
        if https_suffix ~= nil and certs.covered(host) then return "redirect" end
        return "off"
    end
    return mode
end

-- The Strict-Transport-Security value of a route, made once per entry.
local function hsts(route)
    local value = route._hsts
    if value == nil then
        value = "max-age=" .. string.format("%d", route.hsts_max_age)
            .. (route.hsts_subdomains and "; includeSubDomains" or "")
        route._hsts = value
    end
    return value
end

-- (service, route path, host, uri) for a request, from "$host$uri" (nginx refuses a Host with a
-- "/" in it, and a URI begins with one: the first "/" is where the path starts), as routes.find
-- answers it. Kept per worker for the requests a route answers (a miss, a 404, is looked up each
-- time: random paths must not fill or churn the cache), at most MAX_FOUND of them, none longer
-- than MAX_KEY: one lookup of the string nginx passed, no string made, for a request seen before.
local function find(key)
    local hit = found[key]
    if hit then return hit[1], hit[2], hit[3], hit[4] end
    local slash = key:find("/", 1, true)
    if slash == nil then return nil, nil, key, "" end
    local host, uri = key:sub(1, slash - 1), key:sub(slash)
    local name, path = routes.find(index, host, uri)
    if name and #key <= MAX_KEY then
        if nfound >= MAX_FOUND then
            found, nfound = {}, 0
        end
        found[key] = {name, path, host, uri}
        nfound = nfound + 1
    end
    return name, path, host, uri
end

-- A route's allow-list, parsed once per worker per entry (entries are replaced, never changed).
local function allowed(route)
    local nets = route._nets
    if nets == nil then
        nets = {}
        for _, text in ipairs(route.allow) do
            local bytes, bits = contract.parse_network(text)
            if bytes then nets[#nets + 1] = {bytes, bits} end
        end
        route._nets = nets
    end
    local addr = ngx.var.binary_remote_addr
    for _, net in ipairs(nets) do
        if contract.in_network(addr, net[1], net[2]) then return true end
    end
    return false
end

-- The sticky key docs/guides/routing.md documents: X-Client-Id, else the client_id cookie, else address + user agent.
local function client_key()
    local id = ngx.var.http_x_client_id
    if id and id ~= "" then return id end
    id = ngx.var.cookie_client_id
    if id and id ~= "" then return id end
    return (ngx.var.remote_addr or "") .. (ngx.var.http_user_agent or "")
end

-- The pool for this request: the canary's when the client asks for it or the split sends it
-- there, else the stable one; nil when nothing is admitted. Second, the pool a retry may move
-- to once every host of the first has failed: the other version's, for a request the split
-- placed (a client that asked for the canary stays on it; a canary at 0 % is no retry target).
local function choose(entry)
    local stable = entry and entry.stable
    if type(stable) ~= "table" then return nil end
    local canary = entry.canary
    if type(canary) ~= "table" then return stable.servers, nil end
    if ngx.var.http_x_canary == "always" or ngx.var.cookie_canary == "always" then return canary.servers, nil end
    local w = entry.weight or 0
    if w <= 0 then return stable.servers, nil end       -- a canary at 0 % takes only who asks for it
    if w >= 100 or routes.in_split(client_key(), w) then return canary.servers, stable.servers end
    return stable.servers, canary.servers
end

-- The answer of the proxy's own for a request of service `name` (its JSON and its metrics name the
-- service: $proxystack_service, written only on this path, not for each proxied request; the
-- answers of no service, "!404" and "!301", leave it unwritten).
local function answer(name, code)
    ngx.var.proxystack_service = name
    return code
end

-- rewrite phase, from set_by_lua (which, unlike access_by_lua, needs no coroutine per request),
-- with the request's "$host$uri" (`target`) and $content_length as arguments (nginx evaluates
-- them, cheaper than reading ngx.var). Written to compile (no loop on the way of a request whose
-- route was seen before), as the JIT compiles only such code.
-- `listener`: "http", "stream" (the second call for a route that does not buffer) or "grpc"
-- (the gRPC listener, where only proxy.protocol=grpc routes answer). Returns the name of the
-- service that serves the request, which the location proxies and the balancer and the metrics
-- read back (routed, not ngx.ctx, whose per-request table cost about 0.6 us a request), or what
-- the location answers itself, a code that begins with "!" (no
-- service name does):
--   "!404"    no route here;  "!301" the route's path without its final slash ($proxystack_location)
--   "!426"    a gRPC route asked for on the HTTP listener
--   "!403"    the client's network is not allowed;  "!429" over the route's rate limit
--   "!413"    the declared body is larger than the route takes;  "!503" nothing admitted
--   "!stream" a route with buffering off: the location hands the request on to @stream
--   "!308"    plain HTTP to a route served over HTTPS: redirected ($proxystack_location)
--   "!https"  plain HTTP to a route served over HTTPS only (proxy.https=only): refused
-- `scheme`: "http" or "https", the server's (a constant in each server of the template). Over
-- HTTPS a route with proxy.https=off is not found; one with proxy.hsts sends
-- Strict-Transport-Security ($proxystack_hsts).
function _M.route(listener, scheme, target, content_length)
    local streaming = listener == "stream"
    refresh()
    local name, path, host, uri = find(target or "")
    if name == nil then
        if path == nil then return "!404" end
        local args = ngx.var.args
        ngx.var.proxystack_location = args and (path .. "?" .. args) or path
        return "!301"
    end
    local entry = backends.get(name, seen)
    local route = entry and entry.route or NO_ROUTE
    if (route.protocol == "grpc") ~= (listener == "grpc") then
        return listener == "grpc" and "!404" or answer(name, "!426")
    end
    if scheme == "https" then
        if route.https == "off" then return "!404" end
        if route.hsts_max_age then ngx.var.proxystack_hsts = hsts(route) end
    elseif listener ~= "grpc" then
        local mode = https_mode(route, host or "")
        -- only to a host name as the contract spells one: a Host such as "evil.com?.example.com"
        -- must not become a Location a browser (or a cache in front) follows elsewhere
        if mode == "redirect" and https_suffix ~= nil and contract.name_ok("host", host) then
            ngx.var.proxystack_location = "https://" .. host .. https_suffix .. ngx.var.request_uri
            return answer(name, "!308")
        elseif mode == "only" or mode == "redirect" then
            return answer(name, "!https")
        end
    end
    if route.allow and not allowed(route) then return answer(name, "!403") end
    if route.rate_limit and not streaming and over_limit(name, route.rate_limit) then return answer(name, "!429") end
    local length = tonumber(content_length)
    if length and length > (route.body_size or DEFAULT_BODY_SIZE) then return answer(name, "!413") end
    if route.buffering == false and listener == "http" then return "!stream" end
    if type(entry and entry.stable) ~= "table" then return answer(name, "!503") end
    if route.strip_prefix then ngx.req.set_uri(uri:sub(#path)) end
    return name
end

-- The route of the request set_by_lua runs for, kept for the balancer and the metrics (routed).
-- The template's call passes set_by_lua's arguments on as they come, `$host$uri` and
-- `$content_length`: `set_by_lua $proxystack_route 'return router.request(listener, scheme, ...)'
-- $host$uri $content_length` (nginx's Lua module hands them to the chunk as Lua strings, ""
-- for an empty one; reading them again through ngx.arg would make each string a second time).
function _M.request(listener, scheme, target, content_length)
    local said = _M.route(listener, scheme, target, content_length)
    routed[request_key()] = said
    return said
end

-- The first server after `i` (from the start when `i` is 0) whose host no try of this request
-- failed on, or nil. A host that went away takes all its instances with it: a retry on its
-- neighbour in the pool (the same host, as often as not) would fail the same way.
local function next_elsewhere(servers, n, i, failed)
    for step = 1, n do
        local j = (i + step - 1) % n + 1
        if j ~= i and not failed[servers[j][1]] then return j end
    end
    return nil
end

-- What the earlier tries of this request went to, from $upstream_addr ("a:p, [v6]:p, ..."): the
-- set of their hosts as the pool spells them (IPv6 without brackets), and the last try's host and port.
local function tried(addresses)
    local failed, host, port = {}, nil, nil
    for token in (addresses or ""):gmatch("[^%s,]+") do
        local h, p = token:match("^%[(.+)%]:(%d+)$")
        if h == nil then h, p = token:match("^([^:]+):(%d+)$") end
        if h then
            failed[h] = true
            host, port = h, p
        end
    end
    return failed, host, port
end

-- The index of the server at host:port in a pool, or nil.
local function position(servers, host, port)
    for j, s in ipairs(servers) do
        if s[1] == host and tostring(s[2]) == port then return j end
    end
    return nil
end

-- The next round-robin index of a pool in this worker.
local function next_index(servers)
    local i = (rr[servers] or 0) % #servers + 1
    rr[servers] = i
    return i
end

-- balancer phase: round robin over the request's pool (chosen here from the service the router
-- named: stable or canary, as choose() decides); a retry moves to the next server on a host no
-- earlier try failed on, and once the pool has none left, to the other version's pool (for a
-- request the split placed): a host lost mid-update may hold every server of one pool. No state
-- is kept between the tries but what nginx keeps: the addresses tried ($upstream_addr).
function _M.balance()
    local name = routed_name()
    local entry = backends.get(name, seen)
    local servers, other = choose(entry)
    if servers == nil or #servers == 0 then
        -- withdrawn between the route's check and this moment (a push in between)
        ngx.log(ngx.WARN, "proxystack: no admitted instance left for ", name)
        return ngx.exit(502)
    end
    local route = entry.route or NO_ROUTE
    local i
    if balancer.get_last_failure() == nil then
        i = next_index(servers)
        local tries = math.min(#servers + (other and #other or 0), (route.retries or DEFAULT_RETRIES) + 1)
        if tries > 1 then balancer.set_more_tries(tries - 1) end
    else
        local failed, host, port = tried(ngx.var.upstream_addr)
        i = next_elsewhere(servers, #servers, position(servers, host, port) or 0, failed)
        if i == nil and other ~= nil and #other > 0 then
            servers = other
            i = next_elsewhere(servers, #servers, 0, failed)
        end
        -- every host failed: the server after the last one tried (in the pool it was in)
        if i == nil then i = (position(servers, host, port) or 0) % #servers + 1 end
    end
    if route.timeout or route.connect_timeout then
        balancer.set_timeouts(route.connect_timeout, route.timeout, route.timeout)
    end
    local s = servers[i]
    local ok, err = balancer.set_current_peer(s[1], s[2])
    if not ok then
        ngx.log(ngx.ERR, "proxystack: cannot use peer ", s[1], ":", s[2], ": ", err)
        return ngx.exit(502)
    end
end

return _M
