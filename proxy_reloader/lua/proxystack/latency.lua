-- The latency histogram's buckets (upper bounds in seconds, as Prometheus' `le`) and which one a
-- request's time falls in. Plain Lua with no ngx API (tests/lua runs it under luajit).
local _M = {}

_M.BUCKETS = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
_M.COUNT = #_M.BUCKETS + 1      -- and +Inf

-- The index of the first bucket whose bound `took` does not exceed (COUNT: +Inf). Written out
-- as a binary search over the bounds above, with no loop, so that the log phase that calls it
-- for every request compiles as one trace.
function _M.bucket(took)
    if took <= 0.1 then
        if took <= 0.01 then return took <= 0.005 and 1 or 2 end
        if took <= 0.025 then return 3 end
        return took <= 0.05 and 4 or 5
    end
    if took <= 1 then
        if took <= 0.25 then return 6 end
        return took <= 0.5 and 7 or 8
    end
    if took <= 2.5 then return 9 end
    if took <= 5 then return 10 end
    return took <= 10 and 11 or 12
end

return _M
