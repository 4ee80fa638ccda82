-- Which certificate serves a host name: its own (exact), else its domain's wildcard (*.example.com
-- covers a.example.com, not a.b.example.com), else the default one. As catalog.certificates'
-- `serving`; tests/unit/test_certificates.py runs the same cases through both. Plain Lua (no ngx
-- API), so it runs under luajit as well as inside nginx.
local _M = {}

-- `present`: name -> anything, the certificates there are. Returns the name, or nil.
function _M.pick(present, host)
    if host == nil or host == "" then return present["default"] and "default" or nil end
    if present[host] then return host end
    local dot = host:find(".", 1, true)
    if dot and dot > 1 then
        local wild = "*" .. host:sub(dot)
        if present[wild] then return wild end
    end
    if present["default"] then return "default" end
    return nil
end

-- Whether the host has a certificate of its own or its domain's (the default one does not count):
-- plain HTTP to such a host is redirected to HTTPS unless its route says otherwise.
function _M.covered(present, host)
    local name = _M.pick(present, host)
    return name ~= nil and name ~= "default"
end

return _M
