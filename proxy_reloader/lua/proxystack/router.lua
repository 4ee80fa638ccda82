-- Per request: which pool (stable or canary) serves it, then which server of that pool.
-- Every decision about *who is admitted* was made by proxy-reloader; this only picks.
local balancer = require "ngx.balancer"
local backends = require "proxystack.backends"

local _M = {}

-- per worker: a pool's server list -> the index it last used (round robin). Keyed by the list
-- itself, which a push replaces, so a changed pool starts afresh and an old one is collected.
local rr = setmetatable({}, {__mode = "k"})
local MAX_TRIES = 3         -- as proxy_next_upstream_tries: a dead peer costs a retry, not an error

-- The sticky key docs/guides/routing.md documents: X-Client-Id, else the client_id cookie, else address + user agent.
local function client_key()
    local id = ngx.var.http_x_client_id
    if id and id ~= "" then return id end
    id = ngx.var.cookie_client_id
    if id and id ~= "" then return id end
    return (ngx.var.remote_addr or "") .. (ngx.var.http_user_agent or "")
end

local function wants_canary(entry)
    if ngx.var.http_x_canary == "always" or ngx.var.cookie_canary == "always" then return true end
    local w = entry.weight or 0
    if w <= 0 then return false end
    if w >= 100 then return true end
    return ngx.crc32_long(client_key()) % 100 < w
end

-- The pool for this request: the canary's when the client asks for it or the split sends it
-- there, else the stable one; nil when nothing is admitted.
local function choose(entry)
    local stable = entry and entry.stable
    if type(stable) ~= "table" then return nil end
    local canary = entry.canary
    if type(canary) == "table" and wants_canary(entry) then return canary.servers end
    return stable.servers
end

-- rewrite phase, from set_by_lua (which, unlike access_by_lua, needs no coroutine per request):
-- "" when nothing is admitted (the location then answers 503 with its JSON body), else "1".
function _M.pick(service)
    local ctx = ngx.ctx
    ctx.service = service
    local servers = choose(backends.get(service))
    if servers == nil then
        ctx.version = "none"
        return ""
    end
    ctx.pool = servers
    return "1"
end

-- balancer phase: round robin over the chosen pool; a retry moves to the next server.
function _M.balance()
    local ctx = ngx.ctx
    local servers = ctx.pool
    local n = #servers
    local i = ctx.index
    if i == nil then
        i = (rr[servers] or 0) % n + 1
        rr[servers] = i
        if n > 1 then balancer.set_more_tries(math.min(n, MAX_TRIES) - 1) end
    else
        i = i % n + 1
    end
    ctx.index = i
    local s = servers[i]
    ctx.version = s[3]
    local ok, err = balancer.set_current_peer(s[1], s[2])
    if not ok then
        ngx.log(ngx.ERR, "proxystack: cannot use peer ", s[1], ":", s[2], ": ", err)
        return ngx.exit(502)
    end
end

return _M
