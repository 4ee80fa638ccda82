-- Per-request metrics: requests by service, version and status class, and a latency histogram
-- per service and version. Each worker counts in a Lua table and adds it to the shared dict
-- once a second (and when it exits), so a request costs no lock; /metrics reads the dict.
local _M = {}

local dict = ngx.shared.proxystack_metrics
local BUCKETS = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
local pending = {}          -- per worker: key -> amount not yet in the dict

local function add(key, amount)
    pending[key] = (pending[key] or 0) + amount
end

-- log phase
function _M.log()
    local ctx = ngx.ctx
    local service = ctx.service
    if not service then return end
    local label = service .. "|" .. (ctx.version or "none")
    local class = math.floor(ngx.status / 100) .. "xx"
    add("r|" .. label .. "|" .. class, 1)
    local took = tonumber(ngx.var.request_time) or 0
    local b = #BUCKETS + 1
    for i, le in ipairs(BUCKETS) do
        if took <= le then b = i; break end
    end
    add("h|" .. label .. "|" .. b, 1)
    add("s|" .. label, took)
end

function _M.flush(premature)
    local batch = pending
    pending = {}
    for key, amount in pairs(batch) do
        local ok, err = dict:incr(key, amount, 0)
        if not ok then ngx.log(ngx.ERR, "proxystack: metrics dict: ", err) end
    end
end

local function esc(s)
    return (s:gsub('[\\"\n]', {["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n"}))
end

-- Prometheus text format.
function _M.render()
    local requests, hist, sums = {}, {}, {}
    for _, key in ipairs(dict:get_keys(0)) do
        local kind, service, version, rest = key:match("^(%a)|([^|]*)|([^|]*)|?(.*)$")
        local v = dict:get(key) or 0
        local labels = 'service="' .. esc(service) .. '",version="' .. esc(version) .. '"'
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
