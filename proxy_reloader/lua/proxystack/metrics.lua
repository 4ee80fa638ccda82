-- Per-request metrics: requests by service, version and status class, and a latency histogram
-- per service and version. Each worker counts in a Lua table and adds it to the shared dict
-- once a second (and when it exits), so a request costs no lock; /metrics reads the dict.
--
-- Keys in the dict, LABEL being "SERVICE|VERSION":
--   r|LABEL|CLASS  requests by status class     h|LABEL|N  requests in histogram bucket N
--   s|LABEL        total request time           t|LABEL    when a worker last added to LABEL
--   prune          taken for prune_every seconds by the one worker that looks for series to delete
-- The series of a version the pushed table no longer lists go once no worker has added to them
-- for the grace period (configure), so that deploys do not grow /metrics, and the zone, forever.
local _M = {}

local backends = require "proxystack.backends"
local latency = require "proxystack.latency"
local router = require "proxystack.router"

local dict = ngx.shared.proxystack_metrics
local BUCKETS = latency.BUCKETS
local NB = latency.COUNT
local bucket = latency.bucket
local CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx"}
-- per worker, not yet in the dict: service -> version -> {count per class, count per bucket, sum}
local pending = {}

local BANG = string.byte("!")

-- log phase (in the locations that route): a few table updates, no string built per request.
-- The service is the one the router named (router.take, which ends the request's slot), or for
-- an answer of the proxy's own (403, 429, ...: a "!" code, version "none") the one it left in
-- $proxystack_service, if any; the version is that of the server that answered
-- (backends.version_of).
function _M.log()
    local service = router.take()
    local version
    if service == nil or service == "" then return end
    if service:byte(1) == BANG then
        -- no service for these two (and nothing wrote $proxystack_service: nginx would warn)
        if service == "!404" or service == "!301" then return end
        service = ngx.var.proxystack_service
        if service == nil or service == "" then return end
    else
        version = backends.version_of(service)
    end
    local status = ngx.status
    local by_version = pending[service]
    if not by_version then by_version = {}; pending[service] = by_version end
    version = version or "none"
    local c = by_version[version]
    if not c then
        c = {classes = {0, 0, 0, 0, 0}, buckets = {}, sum = 0}
        for i = 1, NB do c.buckets[i] = 0 end
        by_version[version] = c
    end
    local class = math.floor(status / 100)
    if class >= 1 and class <= 5 then c.classes[class] = c.classes[class] + 1 end
    local took = ngx.now() - ngx.req.start_time()
    local b = bucket(took)
    c.buckets[b] = c.buckets[b] + 1
    c.sum = c.sum + took
end

-- How long a version the table no longer lists keeps its series after its last request:
-- long enough for Prometheus to scrape the last increments, even after missing a few scrapes.
local grace = 600
-- How often a worker looks for such series: at most once a minute, and at least once per grace.
local prune_every = 60
local next_prune = 0            -- per worker: when to look next

-- The settings nginx.conf renders (proxy-reloader's Settings.metrics_grace).
function _M.configure(options)
    grace = options.grace or grace
    prune_every = math.min(60, grace)
end

-- One flush's troubles with the dict (a full zone), logged once when the flush ends.
local evicted, failed, why = 0, 0, nil

local function noted(ok, err, forcible)
    if not ok then
        failed = failed + 1
        why = err
    elseif forcible then
        evicted = evicted + 1
    end
end

local function incr(key, amount)
    if amount ~= 0 then noted(dict:incr(key, amount, 0)) end
end

local function report_troubles()
    if evicted == 0 and failed == 0 then return end
    local what = {}
    if evicted > 0 then
        what[#what + 1] = evicted .. " updates evicted the least recently used keys (their series restart at 0)"
    end
    if failed > 0 then
        what[#what + 1] = failed .. " updates failed (" .. tostring(why) .. "; their counts are lost)"
    end
    ngx.log(failed > 0 and ngx.ERR or ngx.WARN, "proxystack: shared dict proxystack_metrics is full: ",
            table.concat(what, ", "), "; raise its size: proxy-reloader --metrics-size")
    evicted, failed, why = 0, 0, nil
end

local function delete_series(label)
    for i = 1, 5 do dict:delete("r|" .. label .. "|" .. CLASSES[i]) end
    for i = 1, NB do dict:delete("h|" .. label .. "|" .. i) end
    dict:delete("s|" .. label)
    dict:delete("t|" .. label)
end

-- Delete the series of each version the table no longer lists and no worker added to for the
-- grace period. A series with no time yet (written before times were kept, or whose time was
-- evicted) gets one now, so it goes a grace period later.
local function prune(now)
    local labels = {}
    local keys = dict:get_keys(0)
    for i = 1, #keys do
        local label = keys[i]:match("^%a|([^|]*|[^|]*)")
        if label then labels[label] = true end
    end
    for label in pairs(labels) do
        local service, version = label:match("^([^|]*)|(.*)$")
        if not backends.lists(service, version) then
            local last = dict:get("t|" .. label)
            if last == nil then
                noted(dict:set("t|" .. label, now))
            elseif now - last >= grace then
                delete_series(label)
            end
        end
    end
end

function _M.flush(premature)
    local batch = pending
    pending = {}
    local now = ngx.now()
    for service, by_version in pairs(batch) do
        for version, c in pairs(by_version) do
            local label = service .. "|" .. version
            noted(dict:set("t|" .. label, now))
            for i = 1, 5 do incr("r|" .. label .. "|" .. CLASSES[i], c.classes[i]) end
            for i = 1, NB do incr("h|" .. label .. "|" .. i, c.buckets[i]) end
            incr("s|" .. label, c.sum)
        end
    end
    -- each worker asks at most once per prune_every; the first to take "prune" looks for all of them
    if not premature and now >= next_prune then
        next_prune = now + prune_every
        if dict:add("prune", true, prune_every) then prune(now) end
    end
    report_troubles()
end

local function esc(s)
    return (s:gsub('[\\"\n]', {["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n"}))
end

-- Prometheus text format.
function _M.render()
    local requests, hist, sums = {}, {}, {}
    for _, key in ipairs(dict:get_keys(0)) do
        local kind, service, version, rest = key:match("^([rhs])|([^|]*)|([^|]*)|?(.*)$")
        local v = kind and dict:get(key) or 0
        local labels = kind and ('service="' .. esc(service) .. '",version="' .. esc(version) .. '"')
        if kind == "r" then
            requests[#requests + 1] = "proxystack_requests_total{" .. labels .. ',status="' .. esc(rest) .. '"} ' .. v
        elseif kind == "h" then
            local h = hist[labels] or {}
            h[tonumber(rest)] = v
            hist[labels] = h
        elseif kind == "s" then
            sums[labels] = v
        end
    end
    table.sort(requests)
    local out = {
        "# HELP proxystack_requests_total Requests through the proxy by service, version and status class.",
        "# TYPE proxystack_requests_total counter",
    }
    for _, line in ipairs(requests) do out[#out + 1] = line end
    out[#out + 1] = "# HELP proxystack_request_duration_seconds Request time through the proxy, by service and version."
    out[#out + 1] = "# TYPE proxystack_request_duration_seconds histogram"
    local keys = {}
    for labels in pairs(hist) do keys[#keys + 1] = labels end
    table.sort(keys)
    for _, labels in ipairs(keys) do
        local h, total = hist[labels], 0
        for i = 1, #BUCKETS + 1 do
            total = total + (h[i] or 0)
            local le = BUCKETS[i] and tostring(BUCKETS[i]) or "+Inf"
            out[#out + 1] = "proxystack_request_duration_seconds_bucket{" .. labels .. ',le="' .. le .. '"} ' .. total
        end
        out[#out + 1] = "proxystack_request_duration_seconds_sum{" .. labels .. "} " .. (sums[labels] or 0)
        out[#out + 1] = "proxystack_request_duration_seconds_count{" .. labels .. "} " .. total
    end
    return table.concat(out, "\n") .. "\n"
end

return _M
