-- Which service a request is for: its host, then the longest path prefix, as nginx's server
-- names and prefix locations would choose. Plain Lua with no ngx API (tests/lua runs it under
-- luajit); router.lua keeps one index per worker and builds it again only when a route changed.
--
-- A route answers at each name of its hosts (an exact name, or *.DOMAIN for every name under
-- DOMAIN) and, with no hosts, on the default host: any name no route claims. A host picks its
-- routes exactly as nginx picks a server block: the exact name, else the longest wildcard, else
-- the default; its routes are the only ones tried (a host with no route at a path answers 404,
-- it does not fall back to the default host's routes).
local _M = {}

local SLASH = 47

-- entries: service name -> pushed entry. Two services at one host and path: the first by name
-- keeps it (proxy-reloader leaves the second out before pushing; this only makes sure).
function _M.build(entries)
    local index = {exact = {}, wild = {}, default = {}}
    local names = {}
    for name in pairs(entries) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
        local route = entries[name].route or {}
        local path = route.path or ("/" .. name .. "/")
        local hosts = route.hosts
        if type(hosts) ~= "table" or #hosts == 0 then hosts = {""} end
        for _, host in ipairs(hosts) do
            local set, key
            if host == "" then
                set = index.default
            else
                if host:sub(1, 2) == "*." then set, key = index.wild, host:sub(3) else set, key = index.exact, host end
                local paths = set[key]
                if not paths then paths = {}; set[key] = paths end
                set = paths
            end
            if set[path] == nil then set[path] = name end
        end
    end
    return index
end

-- The routes (path -> service) of a host: the exact name's, the longest matching wildcard's,
-- or the default host's.
function _M.paths_for(index, host)
    local paths = index.exact[host]
    if paths then return paths end
    local domain = host
    while true do
        local dot = domain:find(".", 1, true)
        if not dot then break end
        domain = domain:sub(dot + 1)
        paths = index.wild[domain]
        if paths then return paths end
    end
    return index.default
end

-- (service, the route's path) for a request, or nil. The cost grows with the request path's
-- depth, never with the number of routes. A path that is a route's path without its final
-- slash gives (nil, that route's path): nginx answers such a request with a redirect.
function _M.find(index, host, uri)
    local paths = _M.paths_for(index, host)
    for i = #uri, 1, -1 do
        if uri:byte(i) == SLASH then
            local prefix = uri:sub(1, i)
            local name = paths[prefix]
            if name then return name, prefix end
        end
    end
    local slashed = uri .. "/"
    if paths[slashed] then return nil, slashed end
    return nil
end

return _M
