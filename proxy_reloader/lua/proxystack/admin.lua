-- The push endpoint, on a unix socket in a folder only proxy-reloader's user may enter, and
-- guarded by a secret only that user can read: loopback is no boundary (test containers share
-- the host's network), so an address alone proves nothing.
--   POST /backends        apply a push (see backends.lua for the contract)
--   GET  /state           {"generation": N, "boot": ID, "services": N, "certificates": N,
--                          "worker": PID, "lua_heap_kb": N}: the last two of the worker that answered
--   GET  /backends[/NAME] what the workers route by
--   GET  /certificates    {NAME: generation}: the certificates served by SNI (never the keys)
--   GET  /metrics         Prometheus text
local cjson = require "cjson.safe"
local backends = require "proxystack.backends"
local certs = require "proxystack.certs"
local metrics = require "proxystack.metrics"

local _M = {}
local secret = nil

function _M.load_secret(path)
    local f = io.open(path, "r")
    if not f then
        ngx.log(ngx.ERR, "proxystack: no push secret at ", path, "; every push is refused")
        return
    end
    local s = f:read("*l")
    f:close()
    if s and #s >= 32 then secret = s end
end

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

local function same(a, b)      -- compare without an early exit on the first difference
    if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then return false end
    local diff = 0
    for i = 1, #a do diff = bit.bor(diff, bit.bxor(a:byte(i), b:byte(i))) end
    return diff == 0
end

local function read_body()
    ngx.req.read_body()
    local raw = ngx.req.get_body_data()
    if raw then return raw end
    local path = ngx.req.get_body_file()
    if not path then return nil end
    local f = io.open(path, "r")
    if not f then return nil end
    raw = f:read("*a")
    f:close()
    return raw
end

function _M.handle()
    if not secret or not same(ngx.var.http_x_proxystack_secret, secret) then
        return reply(403, {error = "push refused: this endpoint needs proxy-reloader's secret", status = 403})
    end
    local method, uri = ngx.req.get_method(), ngx.var.uri
    if method == "GET" and uri == "/state" then
        local n = #backends.names()
        local c = 0
        for _ in pairs(certs.names()) do c = c + 1 end
        return reply(200, {generation = backends.generation(), boot = backends.boot(), services = n, certificates = c,
                           worker = ngx.worker.pid(), lua_heap_kb = math.floor(collectgarbage("count"))})
    elseif method == "GET" and uri == "/metrics" then
        ngx.header["Content-Type"] = "text/plain; version=0.0.4"
        ngx.print(metrics.render())
        return ngx.exit(200)
    elseif method == "GET" and uri == "/certificates" then
        return reply(200, {generation = certs.generation(), names = certs.names()})
    elseif method == "GET" and uri == "/backends" then
        return reply(200, backends.all())
    elseif method == "GET" and uri:find("^/backends/") then
        local entry = backends.get(uri:sub(11))
        if not entry then return reply(404, {error = "no such service in the table", status = 404}) end
        return reply(200, entry)
    elseif method == "POST" and uri == "/backends" then
        local raw = read_body()
        if not raw then return reply(400, {error = "empty body", status = 400}) end
        local body, err = cjson.decode(raw)
        if body == nil then return reply(400, {error = "body is not JSON: " .. tostring(err), status = 400}) end
        local ok, why = backends.check_push(body)
        if not ok then return reply(400, {error = "push refused, table unchanged: " .. why, status = 400}) end
        if body.generation <= backends.generation() then
            return reply(409, {error = "stale push: generation " .. body.generation .. " is not newer than "
                               .. backends.generation(), status = 409, generation = backends.generation()})
        end
        ok, why = certs.check(body.certificates)
        if not ok then return reply(400, {error = "push refused, table unchanged: " .. why, status = 400}) end
        ok, why = certs.store(body.certificates, body.full, body.generation)
        if ok then ok, why = certs.store_challenges(body.challenges, body.full) end
        if ok then ok, why = backends.apply(body) end
        if not ok then return reply(507, {error = why, status = 507}) end
        return reply(200, {generation = backends.generation(), boot = backends.boot()})
    end
    return reply(404, {error = "unknown endpoint; try POST /backends, GET /state, /backends, /certificates, /metrics", status = 404})
end

return _M
