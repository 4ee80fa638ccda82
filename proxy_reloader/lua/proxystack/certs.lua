-- TLS certificates by SNI, from the pushed table: no certificate file in nginx.conf is ever
-- served, and adding, rotating or removing a certificate needs no reload.
--
-- proxy-reloader pushes {name: {cert, key} or null} with the routes (contract.json); `check`
-- parses every PEM before any of the push is applied, `store` keeps them in a shared dict with a
-- stamp per name, and each worker parses a name's PEM once per change (`serve`, in
-- ssl_certificate_by_lua, per handshake: exact name, wildcard, then default; no match and no
-- default: the handshake fails).
local ssl = require "ngx.ssl"
local cjson = require "cjson.safe"
local certnames = require "proxystack.certnames"
local kept = require "proxystack.kept"

local _M = {}

local dict = ngx.shared.proxystack_certs
local state = ngx.shared.proxystack_state

-- per worker: the names there are (name -> the generation that last set it), as of `seen`, and
-- each name's parsed certificate and key (name -> {stamp, cert, key})
local present, seen = {}, nil
local parsed = {}
-- per worker: host -> whether a certificate covers it, for the plain-HTTP redirect; reset with `present`
local covers, ncovers = {}, 0
local MAX_COVERS = 20000

function _M.generation()
    return state:get("certs") or 0
end

function _M.refresh()
    local gen = state:get("certs") or 0
    if gen == seen then return end
    present = cjson.decode(kept.get(dict, "names") or "{}") or {}
    covers, ncovers = {}, 0
    seen = gen
end

-- Whether a certificate of its own or its domain's covers `host` (the router calls `refresh` first).
function _M.covered(host)
    local hit = covers[host]
    if hit ~= nil then return hit end
    hit = certnames.covered(present, host)
    if #host <= 253 then
        if ncovers >= MAX_COVERS then covers, ncovers = {}, 0 end
        covers[host] = hit
        ncovers = ncovers + 1
    end
    return hit
end

-- nil, reason when a certificate or key of a push does not parse (checked before anything is applied).
function _M.check(certs)
    if certs == nil then return true end
    for name, c in pairs(certs) do
        if c ~= cjson.null then
            local cert, err = ssl.parse_pem_cert(c.cert)
            if not cert then return nil, "certificate " .. name .. ": the certificate does not parse: " .. tostring(err) end
            local key
            key, err = ssl.parse_pem_priv_key(c.key)
            if not key then return nil, "certificate " .. name .. ": the key does not parse: " .. tostring(err) end
        end
    end
    return true
end

-- Keep a checked push's certificates; a full push replaces them all.
function _M.store(certs, full, gen)
    if certs == nil and not full then return true end
    certs = certs or {}
    local names = cjson.decode(kept.get(dict, "names") or "{}") or {}
    if full then
        for n in pairs(names) do
            if certs[n] == nil then dict:delete("crt:" .. n); names[n] = nil end
        end
    end
    for name, c in pairs(certs) do
        if c == cjson.null then
            dict:delete("crt:" .. name)
            names[name] = nil
        else
            -- safe_set: a full dict refuses instead of evicting other certificates
            local ok, err = dict:safe_set("crt:" .. name, cjson.encode(c))
            if not ok then return nil, "shared dict full (" .. tostring(err) .. "); raise proxystack_certs' size" end
            names[name] = gen
        end
    end
    local ok, err = kept.set(dict, "names", next(names) and cjson.encode(names) or "{}", true)
    if not ok then return nil, "shared dict full (" .. tostring(err) .. "); raise proxystack_certs' size" end
    state:set("certs", gen)
    return true
end

-- ACME HTTP-01 answers (token -> key authorization), pushed like certificates; a full push replaces them.
function _M.store_challenges(challenges, full)
    if challenges == nil and not full then return true end
    challenges = challenges or {}
    local tokens = cjson.decode(kept.get(dict, "challenges") or "{}") or {}
    if full then
        for t in pairs(tokens) do
            if challenges[t] == nil then dict:delete("ch:" .. t); tokens[t] = nil end
        end
    end
    for token, answer in pairs(challenges) do
        if answer == cjson.null then
            dict:delete("ch:" .. token)
            tokens[token] = nil
        else
            local ok, err = dict:safe_set("ch:" .. token, answer)
            if not ok then return nil, "shared dict full (" .. tostring(err) .. "); raise proxystack_certs' size" end
            tokens[token] = true
        end
    end
    local ok, err = kept.set(dict, "challenges", next(tokens) and cjson.encode(tokens) or "{}", true)
    if not ok then return nil, "shared dict full (" .. tostring(err) .. "); raise proxystack_certs' size" end
    return true
end

-- content phase of /.well-known/acme-challenge/TOKEN: the key authorization, or 404.
function _M.challenge()
    local token = ngx.var.uri:match("^/%.well%-known/acme%-challenge/([A-Za-z0-9_-]+)$")
    local answer = token and dict:get("ch:" .. token)
    if not answer then
        ngx.status = 404
        ngx.header["Content-Type"] = "application/json"
        ngx.say('{"error": "no such ACME challenge", "status": 404}')
        return ngx.exit(404)
    end
    ngx.header["Content-Type"] = "text/plain"
    ngx.print(answer)
    return ngx.exit(200)
end

-- The names and their stamps (for the push endpoint's GET /certificates).
function _M.names()
    return cjson.decode(kept.get(dict, "names") or "{}") or {}
end

local function load(name, stamp)
    local c = cjson.decode(dict:get("crt:" .. name) or "null")
    if type(c) ~= "table" then
        ngx.log(ngx.ERR, "proxystack: certificate ", name, " is listed but not in shared memory")
        return nil
    end
    local cert, err = ssl.parse_pem_cert(c.cert)
    local key
    if cert then key, err = ssl.parse_pem_priv_key(c.key) end
    if not key then
        ngx.log(ngx.ERR, "proxystack: certificate ", name, " does not parse: ", err)
        return nil
    end
    local p = {stamp = stamp, cert = cert, key = key}
    parsed[name] = p
    return p
end

-- ssl_certificate_by_lua: the certificate of the name the client asked for.
function _M.serve()
    _M.refresh()
    local host = ssl.server_name()
    if host then host = host:lower() end
    local name = certnames.pick(present, host)
    if name == nil then
        ngx.log(ngx.INFO, "proxystack: no certificate for ", host or "a client without SNI", " and no default one")
        return ngx.exit(ngx.ERROR)
    end
    local stamp = present[name]
    local p = parsed[name]
    if p == nil or p.stamp ~= stamp then p = load(name, stamp) end
    if p == nil then return ngx.exit(ngx.ERROR) end
    local ok, err = ssl.clear_certs()
    if ok then ok, err = ssl.set_cert(p.cert) end
    if ok then ok, err = ssl.set_priv_key(p.key) end
    if not ok then
        ngx.log(ngx.ERR, "proxystack: cannot serve certificate ", name, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
end

return _M
