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

-- An IPv4 or IPv6 address or network -> its bytes (4 or 16, as ngx.var.binary_remote_addr has
-- them) and its prefix length; nil for anything else, a network with host bits set included.
function _M.parse_network(text)
    if not _M.name_ok("network", text) then return nil end
    local addr, bits = text:match("^([^/]+)/(%d+)$")
    if not addr then addr = text end
    if text:find(":", 1, true) then
        if text:find(".", 1, true) then return nil end
        local head, tail = addr:match("^(.-)::(.*)$")
        local groups = {}
        local function split(part, out)
            if part == "" then return true end
            for g in (part .. ":"):gmatch("([^:]*):") do
                if not g:match("^%x%x?%x?%x?$") then return false end
                out[#out + 1] = tonumber(g, 16)
            end
            return true
        end
        if head then
            local left, right = {}, {}
            if not split(head, left) or not split(tail, right) or #left + #right > 7 then return nil end
            for _, g in ipairs(left) do groups[#groups + 1] = g end
            for _ = 1, 8 - #left - #right do groups[#groups + 1] = 0 end
            for _, g in ipairs(right) do groups[#groups + 1] = g end
        elseif not split(addr, groups) or #groups ~= 8 then
            return nil
        end
        local bytes = {}
        for _, g in ipairs(groups) do
            bytes[#bytes + 1] = string.char(math.floor(g / 256), g % 256)
        end
        addr = table.concat(bytes)
    else
        local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
        if not a then return nil end
        local octets = {tonumber(a), tonumber(b), tonumber(c), tonumber(d)}
        for _, o in ipairs(octets) do if o > 255 then return nil end end
        addr = string.char(octets[1], octets[2], octets[3], octets[4])
    end
    local size = #addr * 8
    bits = bits and tonumber(bits) or size
    if bits > size then return nil end
    for i = bits, size - 1 do            -- host bits must be zero
        local byte = addr:byte(math.floor(i / 8) + 1)
        if math.floor(byte / 2 ^ (7 - i % 8)) % 2 == 1 then return nil end
    end
    return addr, bits
end

-- Whether the address bytes `addr` lie in the network (bytes, prefix length).
function _M.in_network(addr, net, bits)
    if #addr ~= #net then return false end
    local whole = math.floor(bits / 8)
    if addr:sub(1, whole) ~= net:sub(1, whole) then return false end
    local rest = bits % 8
    if rest == 0 then return true end
    local shift = 2 ^ (8 - rest)
    return math.floor(addr:byte(whole + 1) / shift) == math.floor(net:byte(whole + 1) / shift)
end

local function host_ok(h)
    if type(h) == "string" and h:sub(1, 2) == "*." then h = h:sub(3) end
    return _M.name_ok("host", h)
end

local R = C.route
local known = {path = true, hosts = true, allow = true, rate_limit = true, protocol = true, https = true}
for _, f in ipairs(R.flags) do known[f] = true end
for k in pairs(R.numbers) do known[k] = true end
local integers = {}
for _, k in ipairs(R.integers) do integers[k] = true end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    return keys
end

local function check_route(route, where)
    if not object(route) then return nil, where .. " must be an object" end
    for _, key in ipairs(sorted_keys(route)) do
        if not known[key] then return nil, where .. "." .. key .. " is not a route setting" end
    end
    if not _M.name_ok("path", route.path) or route.path:find("//", 1, true) then
        return nil, where .. ".path must be a path of plain segments ending in /"
    end
    local hosts = route.hosts
    if hosts == nil then hosts = {} end
    local ok = type(hosts) == "table" and (#hosts > 0 or next(hosts) == nil) and #hosts >= R.hosts[1]
        and #hosts <= R.hosts[2]
    if ok then
        for _, h in ipairs(hosts) do if not host_ok(h) then ok = false end end
    end
    if not ok then
        return nil, where .. ".hosts must list " .. R.hosts[1] .. " to " .. R.hosts[2] .. " host names"
    end
    for _, flag in ipairs(R.flags) do
        if route[flag] ~= nil and type(route[flag]) ~= "boolean" then
            return nil, where .. "." .. flag .. " must be true or false"
        end
    end
    for _, key in ipairs(sorted_keys(R.numbers)) do
        local n, bounds = route[key], R.numbers[key]
        if n ~= nil and not (type(n) == "number" and n >= bounds[1] and n <= bounds[2]
                             and (not integers[key] or n == math.floor(n))) then
            return nil, where .. "." .. key .. " must be a number " .. tostring(bounds[1]) .. ".." .. tostring(bounds[2])
        end
    end
    if route.protocol ~= nil then
        local found = false
        for _, p in ipairs(R.protocol) do if route.protocol == p then found = true end end
        if not found then return nil, where .. ".protocol must be one of " .. table.concat(R.protocol, ", ") end
    end
    if route.https ~= nil then
        local found = false
        for _, m in ipairs(R.https) do if route.https == m then found = true end end
        if not found then return nil, where .. ".https must be one of " .. table.concat(R.https, ", ") end
    end
    local limit = route.rate_limit
    if limit ~= nil then
        local b = R.rate_limit
        local ok_limit = object(limit) and type(limit.rate) == "number" and limit.rate >= b.rate[1]
            and limit.rate <= b.rate[2] and int_in(limit.burst, b.burst)
        if ok_limit then
            for k in pairs(limit) do if k ~= "rate" and k ~= "burst" then ok_limit = false end end
        end
        if not ok_limit then
            return nil, where .. ".rate_limit must be {rate: " .. tostring(b.rate[1]) .. ".." .. tostring(b.rate[2])
                .. ", burst: " .. tostring(b.burst[1]) .. ".." .. tostring(b.burst[2]) .. "}"
        end
    end
    local allow = route.allow
    if allow ~= nil then
        if type(allow) ~= "table" or (#allow == 0 and next(allow) ~= nil) or #allow < R.allow[1] or #allow > R.allow[2] then
            return nil, where .. ".allow must list " .. R.allow[1] .. " to " .. R.allow[2] .. " networks"
        end
        for i, net in ipairs(allow) do
            if not _M.parse_network(net) then
                return nil, where .. ".allow[" .. i .. "] is not an address or network"
            end
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
    if entry.route ~= nil then return check_route(entry.route, name .. ".route") end
    return true
end

local CERTS = C.certificates

function _M.certificate_name_ok(name)
    return name == "default" or host_ok(name)
end

-- nil, reason when a pushed certificate breaks the contract's shape (nginx parses it after).
function _M.check_certificate(name, cert)
    if not _M.certificate_name_ok(name) then return nil, "certificate name " .. tostring(name) .. " is not valid" end
    if cert == cjson.null then return true end
    local ok = object(cert) and cert.cert ~= nil and cert.key ~= nil
    if ok then
        for k in pairs(cert) do if k ~= "cert" and k ~= "key" then ok = false end end
    end
    if not ok then return nil, "certificate " .. name .. " must be {cert, key} or null" end
    for _, part in ipairs({"cert", "key"}) do
        local pem = cert[part]
        if not (type(pem) == "string" and #pem >= CERTS.pem[1] and #pem <= CERTS.pem[2]
                and pem:sub(1, #CERTS.begins) == CERTS.begins) then
            return nil, "certificate " .. name .. ": " .. part .. " must be PEM text of at most " .. CERTS.pem[2] .. " bytes"
        end
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
    local certs = body.certificates
    if certs ~= nil then
        local count = 0
        if type(certs) == "table" then for _ in pairs(certs) do count = count + 1 end end
        if not (type(certs) == "table" and (certs[1] == nil or count == 0)) or count > CERTS.count[2] then
            return nil, "certificates must be an object of at most " .. CERTS.count[2]
        end
        sorted = {}
        for name in pairs(certs) do sorted[#sorted + 1] = name end
        table.sort(sorted, function(a, b) return tostring(a) < tostring(b) end)
        for _, name in ipairs(sorted) do
            local ok, err = _M.check_certificate(name, certs[name])
            if not ok then return nil, err end
        end
    end
    local challenges = body.challenges
    if challenges ~= nil then
        local count = 0
        if type(challenges) == "table" then for _ in pairs(challenges) do count = count + 1 end end
        if not (type(challenges) == "table" and (challenges[1] == nil or count == 0)) or count > C.challenges.count[2] then
            return nil, "challenges must be an object of at most " .. C.challenges.count[2]
        end
        sorted = {}
        for token in pairs(challenges) do sorted[#sorted + 1] = token end
        table.sort(sorted, function(a, b) return tostring(a) < tostring(b) end)
        for _, token in ipairs(sorted) do
            local answer = challenges[token]
            if not _M.name_ok("acme_token", token) or not (answer == cjson.null or _M.name_ok("key_authorization", answer)) then
                return nil, "challenge " .. tostring(token) .. ": must be TOKEN: KEY_AUTHORIZATION or null"
            end
        end
    end
    return true
end

return _M
