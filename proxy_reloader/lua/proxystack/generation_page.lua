-- The table's generation, which every request reads, on a page of memory that the master maps
-- (shared, anonymous) before it forks the workers: a read is one load. A shared dict's get takes
-- its zone's lock, an atomic write to a cache line that every worker writes: with two workers on
-- two cores the line moving between them cost 1.5-1.9 us of CPU a request (docs/measurements.md),
-- far more than the read's instructions.
--
-- Written after the table it numbers (the shared dict proxystack_state keeps the generation too,
-- and outlives a reload: the page of a reload's workers starts from it). read() answers nil where
-- no page is mapped (an mmap refused, a VM other than the master's), and the dict is read then.
local ffi = require "ffi"

local _M = {}

pcall(ffi.cdef, [[
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
]])

local SIZE = 4096
local PROT_READ_WRITE = 3                       -- PROT_READ | PROT_WRITE
local MAP_SHARED_ANONYMOUS = 0x21               -- MAP_SHARED | MAP_ANONYMOUS (Linux)
local MAP_FAILED = ffi.cast("void *", -1)

local page = nil        -- volatile double[1]: the generation, shared by the master and its workers

-- In the master, at (re)load: maps the page and writes `generation` in it. Unmapped when this
-- VM ends (the master's at its next reload; each worker's when it exits).
function _M.map(generation)
    if page ~= nil then return true end
    local ok, p = pcall(ffi.C.mmap, nil, SIZE, PROT_READ_WRITE, MAP_SHARED_ANONYMOUS, -1, 0)
    if not ok or p == nil or p == MAP_FAILED then
        ngx.log(ngx.WARN, "proxystack: no shared page for the table's generation (",
                ok and "mmap refused" or tostring(p), "): each request reads it from the shared dict")
        return false
    end
    page = ffi.gc(ffi.cast("volatile double *", p), function(q) ffi.C.munmap(ffi.cast("void *", q), SIZE) end)
    page[0] = generation
    return true
end

function _M.read()
    if page == nil then return nil end
    return page[0]
end

function _M.write(generation)
    if page ~= nil then page[0] = generation end
end

-- Brings the page up to `generation` (the dict's) if it is behind: a push applied by a worker of
-- the config before a reload, after the master read the dict for the new workers' page, went to
-- the old page. Generations only grow (a push that is not newer is refused), so the page is only
-- ever moved forward.
function _M.catch_up(generation)
    if page ~= nil and page[0] < generation then page[0] = generation end
end

return _M
