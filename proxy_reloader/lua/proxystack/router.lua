-- Per request: which pool (stable or canary) serves it, then which server of that pool.
-- Every decision about *who is admitted* was made by proxy-reloader; this only picks.
local balancer = require "ngx.balancer"
local backends = require "proxystack.backends"

local _M = {}

local rr = {}               -- per worker: "service/side" -> last index used (round robin)
local MAX_TRIES = 3         -- as proxy_next_upstream_tries: a dead peer costs a retry, not an error

local function unavailable(service)
    ngx.status = 503
    ngx.header["Content-Type"] = "application/json"
    ngx.say('{"error": "no admitted instance of service ', service, '", "service": "', service, '", "status": 503}')
    return ngx.exit(503)
end

-- The sticky key README documents: X-Client-Id, else the client_id cookie, else address + user agent.
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

-- access phase: choose the pool, or answer 503 when nothing is admitted.
function _M.route(service)
    local ctx = ngx.ctx
    ctx.service = service
    local entry = backends.get(service)
    local stable = entry and entry.stable
    if type(stable) ~= "table" then
        ctx.version = "none"
        return unavailable(service)
    end
    local pool, side = stable, "stable"
    local canary = entry.canary
    if type(canary) == "table" and wants_canary(entry) then
        pool, side = canary, "canary"
    end
    ctx.pool, ctx.side = pool.servers, service .. "/" .. side
end

-- balancer phase: round robin over the pool; a retry moves to the next server.
function _M.balance()
    local ctx = ngx.ctx
    local servers = ctx.pool
    local n = #servers
    local i = ctx.index
    if i == nil then
        i = (rr[ctx.side] or 0) % n + 1
        rr[ctx.side] = i
        local more = math.min(n, MAX_TRIES) - 1
        if more > 0 then balancer.set_more_tries(more) end
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
